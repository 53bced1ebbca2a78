"""The shared engines go away while senders keep posting to a real ``streamd serve``:
PostgreSQL stopped, the JetStream stream's leader node SIGKILLed (one node of three),
the Kafka broker frozen (SIGSTOP), one after the other. During each, every request is
answered 200 (the journal buffers) and the affected sink's lag shows in ``/metrics``;
after each recovery everything arrives: the table and the stream hold every
acknowledged event exactly once, the topic at least once."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.engines._deploy import Receiver, metric, receiver_config, write_secrets
from tests.engines._kafka import Tansu
from tests.engines._nats import NatsCluster
from tests.engines._postgres import PASSWORD, PostgresServer
from tests.system._harness import Processes, streamd_argv, wait_for


def _lag_seen(receiver: Receiver, sink: str, timeout: float) -> float:
    """The sink's lag in /metrics once it is above 0 (the outage shows)."""
    seen = wait_for(
        lambda: (metric(receiver.metrics(), "streamd_sink_lag_events", sink=sink) or 0) or None,
        timeout=timeout,
        what=f"the {sink} sink's lag in /metrics",
    )
    assert seen is not None
    return seen


@pytest.mark.parametrize(
    "outage",
    [pytest.param(2.0, id="2s"), pytest.param(60.0, id="60s", marks=pytest.mark.slow)],
)
def test_each_engine_away_ingest_answers_200_and_everything_arrives(
    tmp_path: Path,
    processes: Processes,
    pg_server: PostgresServer,
    nats_cluster: NatsCluster,
    broker: Tansu,
    outage: float,
) -> None:
    tag = f"outage{os.getpid()}x{int(outage)}"
    dsn = pg_server.create_database(tag)
    token, password = write_secrets(tmp_path)
    config = receiver_config("r1", dsn, nats_cluster, broker.bootstrap, tag, token, password)
    receiver = Receiver(processes, tmp_path, "r1", config)
    receiver.start()
    acked, summary = tmp_path / "acked.txt", tmp_path / "summary.json"
    seconds = 3 * outage + 12
    sender = processes.spawn(
        [*streamd_argv(), "emit", "--to", f"http://127.0.0.1:{receiver.port}/events",
         "--mode", "legacy", "--duration", str(seconds), "--rate", "400",
         "--token-file", str(token), "--acked", str(acked), "--summary", str(summary),
         "--time-scale", "60", "--drain", "30", "--seed", "9"],
        "emit",
    )  # fmt: skip
    wait_for(lambda: acked.exists() and acked.stat().st_size > 0, timeout=30,
             what="the first acknowledged batch")  # fmt: skip
    lags: dict[str, float] = {}

    # PostgreSQL stopped.
    pg_server.stop("fast")
    try:
        lags["warehouse"] = _lag_seen(receiver, "warehouse", outage + 30)
        time.sleep(outage)
    finally:
        pg_server.start()
    # The stream's leader (one node of three) SIGKILLed, then restarted.
    leader = nats_cluster.stream_leader(tag.upper())
    nats_cluster.kill_node(leader)
    try:
        time.sleep(outage)
    finally:
        nats_cluster.start_node(leader)
        nats_cluster.wait_ready()
    # The Kafka broker frozen.
    broker.freeze()
    try:
        lags["bus"] = _lag_seen(receiver, "bus", outage + 30)
        time.sleep(outage)
    finally:
        broker.thaw()

    assert sender.popen.wait(timeout=seconds + 120) == 0, sender.stderr()[-2000:]
    figures = json.loads(summary.read_text())
    # Every request answered 200 through every outage: never a retry by the sender.
    assert set(figures["outcomes"]) <= {"200", "status 200"}, figures["outcomes"]
    assert figures["retries"] == 0 and figures["events_given_up"] == 0, figures
    everything = {line for line in acked.read_text().split() if line}
    assert len(everything) >= 1000
    server = receiver.server
    assert server is not None
    wait_for(lambda: not any(receiver.lag().values()), timeout=outage + 120,
             what="every sink caught up after the outages",
             context=lambda: server.spawned.stderr()[-3000:])  # fmt: skip

    with psycopg.connect(dsn, password=PASSWORD) as conn:
        rows = [str(r[0]) for r in conn.execute("SELECT event_key FROM streamd_events")]
    assert len(rows) == len(set(rows)) and set(rows) == everything
    stored = Counter(m.headers["Nats-Msg-Id"] for m in nats_cluster.messages(tag.upper()))
    assert set(stored) == everything and max(stored.values()) == 1
    copies: Counter[str] = Counter()
    for topic in [t for t in broker.topics() if t.startswith(f"{tag}.")]:
        copies.update(m.key.decode() for m in broker.read(topic) if m.key is not None)
    assert set(copies) == everything
    dead = subprocess.run(
        [*streamd_argv(), "dlq", "list", "--json", "--data-dir", str(receiver.data)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    print(
        f"engine outages of {outage:g} s: {len(everything)} events acknowledged, all 200; "
        f"lag seen in /metrics {lags}; kafka {sum(copies.values())} messages "
        f"({sum(copies.values()) - len(copies)} duplicates); dlq: {dead.stdout.strip()[:200]}"
    )
