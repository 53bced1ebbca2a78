"""``streamd sinks …`` on the shared engines' sinks of a running daemon, as on the others:
paused sinks deliver nothing (the journal keeps the events), resumed ones catch up, and
a range replay reaches the destination again, where postgres and nats count the copies
as already present and kafka keeps them."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import psycopg

from tests.engines._deploy import Receiver, metric, receiver_config, write_secrets
from tests.engines._kafka import Tansu
from tests.engines._nats import NatsCluster
from tests.engines._postgres import PASSWORD, PostgresServer
from tests.system._harness import Processes, streamd_argv, wait_for

SINKS = ("warehouse", "stream", "bus")


def test_pause_resume_and_replay_work_on_the_engine_sinks(
    tmp_path: Path,
    processes: Processes,
    pg_server: PostgresServer,
    nats_cluster: NatsCluster,
    broker: Tansu,
) -> None:
    tag = f"operate{os.getpid()}"
    dsn = pg_server.create_database(tag)
    token, password = write_secrets(tmp_path)
    config = receiver_config("r1", dsn, nats_cluster, broker.bootstrap, tag, token, password)
    receiver = Receiver(processes, tmp_path, "r1", config)
    receiver.start()
    data = ["--data-dir", str(receiver.data)]

    def streamd(*args: str) -> str:
        done = processes.run([*streamd_argv(), *args, *data], timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def emit(count: int, seed: int) -> set[str]:
        acked = tmp_path / f"acked-{seed}.txt"
        done = processes.run(
            [*streamd_argv(), "emit", "--to", f"http://127.0.0.1:{receiver.port}/events",
             "--mode", "legacy", "--count", str(count), "--unpaced", "--token-file",
             str(token), "--acked", str(acked), "--seed", str(seed), "--drain", "10"],
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return {line for line in acked.read_text().split() if line}

    def rows() -> set[str]:
        with psycopg.connect(dsn, password=PASSWORD) as conn:
            return {str(r[0]) for r in conn.execute("SELECT event_key FROM streamd_events")}

    def stored() -> Counter[str]:
        return Counter(m.headers["Nats-Msg-Id"] for m in nats_cluster.messages(tag.upper()))

    def copies() -> Counter[str]:
        found: Counter[str] = Counter()
        for topic in [t for t in broker.topics() if t.startswith(f"{tag}.")]:
            found.update(m.key.decode() for m in broker.read(topic) if m.key is not None)
        return found

    first = emit(500, 21)
    wait_for(lambda: not any(receiver.lag().values()), timeout=60, what="the first events")
    assert rows() == first and set(stored()) == first and set(copies()) == first

    for sink in SINKS:
        assert streamd("sinks", "pause", sink) == f"sink {sink}: paused\n"
    second = emit(300, 22)
    listing = {s["name"]: s for s in json.loads(streamd("sinks", "list", "--json"))}
    assert {name: listing[name]["state"] for name in SINKS} == dict.fromkeys(SINKS, "paused")
    assert all(listing[name]["lag_events"] == len(second) for name in SINKS), listing
    assert rows() == first and set(stored()) == first and set(copies()) == first

    for sink in SINKS:
        assert streamd("sinks", "resume", sink) == f"sink {sink}: active\n"
    wait_for(lambda: not any(receiver.lag().values()), timeout=60, what="caught up")
    everything = first | second
    assert rows() == everything and set(stored()) == everything

    # A range replay of the first 100 events: present at postgres and nats, copies in kafka.
    before = copies()
    for sink in SINKS:
        streamd("sinks", "replay", sink, "--from-seq", "1", "--to-seq", "100")
    text = ""

    def replayed() -> bool:
        nonlocal text
        text = receiver.metrics()
        present = [
            metric(text, "streamd_sink_destination_events_total", outcome="present", sink=s)
            for s in ("warehouse", "stream")
        ]
        return present == [100.0, 100.0] and sum(copies().values()) == sum(before.values()) + 100

    wait_for(
        replayed,
        timeout=60,
        what="the replayed range at every destination",
        context=lambda: (
            "\n".join(
                line for line in text.splitlines() if "destination_events" in line or "lag" in line
            )
            + f"\nkafka copies {sum(copies().values())} (before {sum(before.values())})"
        ),
    )
    assert rows() == everything and max(stored().values()) == 1
    new = metric(text, "streamd_sink_destination_events_total", outcome="new", sink="warehouse")
    assert new == len(everything)
