"""The kafka sink through the real daemon (``streamd serve``) and a real broker (Tansu):
real Marketo payloads, a duplicate re-send, /metrics, a frozen broker, SIGKILLs."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import random
import re
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.engines._kafka import Message, Tansu
from tests.system._harness import (
    LoadClient,
    Processes,
    Server,
    check_journal,
    children,
    fixture_bytes,
    free_port,
    post,
    read_token,
    serve,
    stop_gracefully,
    total_acked,
    wait_for,
)
from tests.system._load_client import BatchMaker

from .conftest import expected_envelope, expected_headers, journal_rows

FIXTURES = ["legacy_push.json", "lads_batch.json", "lads_single.json", "notification.json",
            "audit_wrapper.json"]  # fmt: skip


def start(
    processes: Processes,
    tmp_path: Path,
    broker: Tansu,
    prefix: str,
    *,
    pool: str = "",
    retry: str = "",
    port: int = 0,
    name: str = "streamd",
) -> Server:
    config = tmp_path / "streamd.toml"
    config.write_text(
        f"""
instance = "kafka-test-1"
[[sinks]]
name = "k"
kind = "kafka"
[sinks.kafka]
bootstrap_servers = ["{broker.bootstrap}"]
topic = "{prefix}.{{stream}}"
[sinks.pool]
linger = 0.02
{pool}
[sinks.retry]
backoff_base = 0.2
backoff_cap = 1.0
probe_interval = 1.0
{retry}
"""
    )
    args = ["--config", str(config)]
    return serve(processes, tmp_path / "data", port=port, args=args, name=name)


def admin_url(server: Server) -> str:
    ready = re.compile(r"^streamd admin ready: (http://127\.0\.0\.1:\d+)\n", re.MULTILINE)
    match = wait_for(
        lambda: ready.search(server.spawned.stdout()), timeout=15, what="the admin listener"
    )
    assert match is not None
    return match.group(1)


def admin_get(server: Server, path: str) -> str:
    """The body of ``GET path`` on the admin listener (asserted 200)."""
    host, port = admin_url(server).removeprefix("http://").rsplit(":", 1)
    token = read_token(server.data_dir / "admin-token")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, text
    return text


def metrics(server: Server) -> dict[str, float]:
    """The samples of ``GET /metrics`` (``name{labels}`` → value)."""
    text = admin_get(server, "/metrics")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def caught_up(journal: Path) -> bool:
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        cursors = [c for (c,) in conn.execute("SELECT cursor FROM sinks")]
    return cursors == [last]


def saved_cursor(journal: Path) -> int:
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        return int(conn.execute("SELECT coalesce(max(cursor), 0) FROM sinks").fetchone()[0])


def progressed(journal: Path, past: int) -> bool:
    return saved_cursor(journal) > past


def read_prefix(broker: Tansu, prefix: str) -> list[Message]:
    return [m for t in broker.topics() if t.startswith(prefix + ".") for m in broker.read(t)]


def post_ok(server: Server, body: bytes) -> None:
    reply = post(server.port, body, token=server.token())
    assert reply.status == 200, reply


def test_real_payloads_arrive_with_a_duplicate_resend_and_metrics(
    tmp_path: Path, processes: Processes, broker: Tansu, topic_prefix: str
) -> None:
    server = start(processes, tmp_path, broker, topic_prefix)
    for name in FIXTURES:
        post_ok(server, fixture_bytes(name))
    post_ok(server, fixture_bytes("legacy_push.json"))  # the sender's re-send: a duplicate
    wait_for(lambda: caught_up(server.journal), timeout=30, what="the kafka sink caught up")
    rows = journal_rows(server.journal)
    samples = metrics(server)
    stop_gracefully(server)

    messages = read_prefix(broker, topic_prefix)
    by_key = Counter(m.key for m in messages)
    assert set(by_key) == {r["event_key"].encode() for r in rows}
    # No failure happened, so nothing was sent twice (Kafka itself would keep a repeat).
    assert max(by_key.values()) == 1
    found = {m.key: m for m in messages}
    for row in rows:
        m = found[row["event_key"].encode()]
        assert m.topic == f"{topic_prefix}.{row['stream']}"
        assert json.loads(m.value) == expected_envelope(row)
        assert m.headers == expected_headers(row, "kafka-test-1")
    assert samples['streamd_sink_delivered_events_total{sink="k"}'] == len(rows)
    assert samples['streamd_sink_lag_events{sink="k"}'] == 0
    assert samples['streamd_sink_state{sink="k",state="active"}'] == 1
    # No producer process ended: the restarts are there, at 0, for each reason.
    assert samples[_RESTARTS.format("exited")] == 0
    assert samples[_RESTARTS.format("protocol")] == 0
    # Every family of a daemon with a kafka sink is in the reference (the integration
    # tests check the same for a daemon without one).
    reference = (Path(__file__).resolve().parents[3] / "docs" / "admin-api.md").read_text()
    names = {sample.split("{", 1)[0] for sample in samples}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in names if not n.endswith("_created")}
    missing = sorted(f for f in families if f"\n| `{f}` |" not in reference)
    assert missing == [], f"metrics not in docs/admin-api.md's table: {missing}"


_RESTARTS = 'streamd_sink_producer_restarts_total{{reason="{}",sink="k"}}'


def producer_pids(server: Server) -> list[int]:
    """The daemon's live kafka producer processes."""
    pids = []
    for pid in children(server.spawned.pid):
        with contextlib.suppress(FileNotFoundError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"streamd.service.kafka_producer" in argv:
                pids.append(pid)
    return pids


def test_a_killed_producer_process_is_counted_in_metrics_and_sinks(
    tmp_path: Path, processes: Processes, broker: Tansu, topic_prefix: str
) -> None:
    """The producer process SIGKILLed twice in a real daemon: each is started again at
    the next batch, and the operator sees two ``exited`` restarts in /metrics and in
    ``GET /sinks``, beside the sink's other figures."""
    server = start(processes, tmp_path, broker, topic_prefix)
    post_ok(server, fixture_bytes("lads_batch.json"))
    wait_for(lambda: caught_up(server.journal), timeout=30, what="a first delivery")
    killed: list[int] = []
    for name in ("legacy_push.json", "notification.json"):  # new events each time
        [pid] = wait_for(lambda: producer_pids(server), timeout=30, what="a producer process")
        assert pid not in killed
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_for(lambda: killed[-1] not in producer_pids(server), timeout=30, what="it reaped")
        post_ok(server, fixture_bytes(name))  # its batch starts a new process
        wait_for(lambda: caught_up(server.journal), timeout=60, what="delivered by a new one")
    samples = metrics(server)
    [sink] = json.loads(admin_get(server, "/sinks"))
    stop_gracefully(server)
    assert samples[_RESTARTS.format("exited")] == 2
    assert samples[_RESTARTS.format("protocol")] == 0
    assert sink["name"] == "k" and sink["producer_restarts"] == {"exited": 2, "protocol": 0}
    keys = {m.key for m in read_prefix(broker, topic_prefix)}
    assert keys == {row["event_key"].encode() for row in journal_rows(server.journal)}


@pytest.mark.parametrize(
    "outage",
    [pytest.param(4.0, id="4s"), pytest.param(60.0, id="60s", marks=pytest.mark.slow)],
)
def test_a_frozen_broker_buffers_in_the_journal_then_everything_arrives(
    tmp_path: Path, processes: Processes, broker: Tansu, topic_prefix: str, outage: float
) -> None:
    # max_attempts = 0: the outage outlasts 8 fast attempts, and a probe that
    # reaches max_attempts would be dead-lettered as a suspect (the runner's policy).
    server = start(processes, tmp_path, broker, topic_prefix, pool="timeout = 5",
                   retry="max_attempts = 0")  # fmt: skip
    maker = BatchMaker(seed=15, client=1)
    post_ok(server, maker.next().body)
    wait_for(lambda: caught_up(server.journal), timeout=30, what="a first delivery")
    broker.freeze()
    try:
        started = time.monotonic()
        posted = 0
        lag = 0.0
        while time.monotonic() - started < outage:  # the outage itself: bounded by its length
            post_ok(server, maker.next().body)  # ingest answers 200: the journal buffers
            posted += 1
            lag = max(lag, metrics(server)['streamd_sink_lag_events{sink="k"}'])
            time.sleep(0.25)
        assert posted >= 2
        assert lag > 0, "the lag did not grow while the broker was frozen"
        assert not caught_up(server.journal)
    finally:
        broker.thaw()
    wait_for(lambda: caught_up(server.journal), timeout=120, what="the sink caught up after")
    rows = journal_rows(server.journal)
    samples = metrics(server)
    stop_gracefully(server)
    keys = Counter(m.key for m in read_prefix(broker, topic_prefix))
    missing = [r["event_key"] for r in rows if r["event_key"].encode() not in keys]
    assert not missing, f"{len(missing)} of {len(rows)} events never reached the topic"
    assert samples['streamd_sink_lag_events{sink="k"}'] == 0
    print(f"kafka outage {outage:g} s: {len(rows)} events, "
          f"{sum(keys.values()) - len(keys)} duplicates at the broker")  # fmt: skip


def report_duplicates(
    tmp_path: Path, broker: Tansu, prefix: str, server: Server, acked: set[str], **facts: object
) -> None:
    """Assert every acknowledged and journaled event reached the topic; write the
    duplicate count to ``kafka-duplicates.json`` (and $STREAMD_KAFKA_DUPLICATES_JSON)."""
    journal = check_journal(server.journal, acked)
    deadline = time.monotonic() + 10.0
    while True:  # bounded: a message acknowledged a moment ago may not be readable yet
        messages = read_prefix(broker, prefix)
        counts = Counter(m.headers["streamd-event-key"].decode() for m in messages)
        missing = [k for k in journal if k not in counts]
        if not missing or time.monotonic() > deadline:
            break
        print(f"kafka: {len(missing)} events not readable yet; reading again")
        time.sleep(0.5)
    assert not missing, f"{facts}: {len(missing)} journaled events never reached Kafka"
    assert set(counts) <= set(journal), f"{facts}: the topic has ids never journaled"
    duplicates = sum(n - 1 for n in counts.values())
    result = {
        **facts,
        "events": len(journal),
        "acknowledged": len(acked),
        "messages": sum(counts.values()),
        "duplicates": duplicates,
        "keys_twice_or_more": sum(1 for n in counts.values() if n > 1),
    }
    text = json.dumps(result)
    print(f"kafka SIGKILL duplicates: {text}")
    with open(tmp_path / "kafka-duplicates.json", "a") as f:
        f.write(text + "\n")
    if out := os.environ.get("STREAMD_KAFKA_DUPLICATES_JSON"):
        with open(out, "a") as f:
            f.write(text + "\n")


@pytest.mark.parametrize(
    "kills",
    [pytest.param(2, id="2-kills"), pytest.param(6, id="6-kills", marks=pytest.mark.slow)],
)
def test_sigkill_mid_drain_of_a_backlog(
    tmp_path: Path, processes: Processes, broker: Tansu, topic_prefix: str, kills: int
) -> None:
    """The worst case: a backlog (posted while the daemon had no sink) drains at full
    speed and streamd is SIGKILLed in the middle, ``kills`` times. Every event arrives;
    the duplicates are what was produced but not yet saved as confirmed at each kill."""
    seed = int(os.environ.get("STREAMD_CRASH_SEED", random.randrange(1 << 32)))
    print(f"kafka SIGKILL backlog test: seed={seed} kills={kills}")
    rng = random.Random(seed)
    port = free_port()
    data_dir = tmp_path / "data"
    server = serve(processes, data_dir, port=port, name="streamd-ingest")  # no sink yet
    clients = [
        LoadClient.start(
            processes, port=port, token_file=data_dir / "api-token", seed=seed, client=i
        )
        for i in range(2)
    ]
    wait_for(lambda: sum(len(c.acked_ids()) for c in clients) >= 30_000, timeout=120,
             what="30,000 acknowledged events")  # fmt: skip
    for client in clients:
        client.stop()
    stop_gracefully(server)
    acked = set().union(*(client.acked_ids() for client in clients))
    pool = "batch_size = 500\nmax_in_flight = 5000"
    cursors: list[int] = []
    for cycle in range(kills):
        server = start(processes, tmp_path, broker, topic_prefix, pool=pool, port=port,
                       name=f"streamd-{cycle}")  # fmt: skip
        # Mid-drain: once this instance has saved progress, after a random extra delay.
        moved = cursors[-1] if cursors else 0
        wait_for(functools.partial(progressed, server.journal, moved), timeout=30, what="progress")
        time.sleep(rng.uniform(0.0, 0.1))
        server.spawned.popen.kill()
        assert server.spawned.wait(10) == -signal.SIGKILL
        cursors.append(saved_cursor(server.journal))
    server = start(processes, tmp_path, broker, topic_prefix, pool=pool, port=port)
    wait_for(lambda: caught_up(server.journal), timeout=60, what="the sink caught up")
    stop_gracefully(server)
    report_duplicates(tmp_path, broker, topic_prefix, server, acked, mode="backlog",
                      seed=seed, kills=kills, cursors_after_kills=cursors,
                      max_in_flight=5000)  # fmt: skip


@pytest.mark.parametrize(
    "kills",
    [pytest.param(2, id="2-kills"), pytest.param(8, id="8-kills", marks=pytest.mark.slow)],
)
def test_sigkill_while_senders_post(
    tmp_path: Path, processes: Processes, broker: Tansu, topic_prefix: str, kills: int
) -> None:
    """streamd is SIGKILLed while two senders post and the sink drains; after restarts
    every acknowledged event is in the topic at least once. The duplicates (Kafka keeps
    what a killed receiver had produced but not yet recorded as confirmed) are counted
    and written to ``kafka-duplicates.json`` (and to $STREAMD_KAFKA_DUPLICATES_JSON)."""
    seed = int(os.environ.get("STREAMD_CRASH_SEED", random.randrange(1 << 32)))
    print(f"kafka SIGKILL test: seed={seed} kills={kills}")
    rng = random.Random(seed)
    port = free_port()
    pool = "batch_size = 500\nmax_in_flight = 5000"
    server = start(processes, tmp_path, broker, topic_prefix, pool=pool, port=port)
    data_dir = tmp_path / "data"
    clients = [
        LoadClient.start(
            processes, port=port, token_file=data_dir / "api-token", seed=seed, client=i
        )
        for i in range(2)
    ]
    wait_for(lambda: total_acked(clients), timeout=20, what="a first acknowledged batch")
    for cycle in range(1, kills + 1):
        time.sleep(rng.uniform(0.5, 1.5))
        server.spawned.popen.kill()
        assert server.spawned.wait(10) == -signal.SIGKILL
        server = start(processes, tmp_path, broker, topic_prefix, pool=pool, port=port,
                       name=f"streamd-{cycle}")  # fmt: skip
    before = total_acked(clients)
    wait_for(lambda: total_acked(clients) > before, timeout=20, what="an ack after restart")
    for client in clients:
        client.stop()
    wait_for(lambda: caught_up(server.journal), timeout=60, what="the sink caught up")
    stop_gracefully(server)

    acked = set().union(*(client.acked_ids() for client in clients))
    report_duplicates(tmp_path, broker, topic_prefix, server, acked, mode="live",
                      seed=seed, kills=kills, max_in_flight=5000)  # fmt: skip
