"""Two receivers behind HAProxy, one destination: the deployment of docs/scale-out.md.

``streamd emit`` (legacy and I/O shapes, with duplicate re-sends) posts through HAProxy
(its configuration is the one on docs/scale-out.md, addresses replaced) to two
``streamd serve`` receivers; each journals locally and drains into the same PostgreSQL
table, the same JetStream stream (3 replicas on a 3-node cluster) and the same Kafka
topic. One receiver is SIGKILLed and restarted again and again while the senders run.
At the end the table and the stream hold every acknowledged event exactly once, the
topic at least once (its duplicates are counted and printed), and the killed
receiver's undrained events have arrived after its restarts.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.engines._deploy import Receiver, haproxy_config, receiver_config, write_secrets
from tests.engines._kafka import Tansu
from tests.engines._nats import NatsCluster
from tests.engines._postgres import PASSWORD, PostgresServer
from tests.system._harness import Processes, free_port, streamd_argv, wait_for


def _emit(processes: Processes, url: str, mode: str, seconds: float, token: Path, acked: Path,
          rate: int, seed: int) -> subprocess.Popen[bytes]:  # fmt: skip
    argv = [*streamd_argv(), "emit", "--to", url, "--mode", mode, "--duration", str(seconds),
            "--rate", str(rate), "--duplicates", "0.05", "--seed", str(seed),
            "--time-scale", "60", "--drain", "60", "--token-file", str(token),
            "--acked", str(acked), "--no-challenge"]  # fmt: skip
    if mode == "io":
        argv.append("--no-sign")
    return processes.spawn(argv, f"emit-{mode}").popen


@pytest.mark.parametrize(
    ("seconds", "kills"),
    [pytest.param(10, 2, id="10s-2kills"), pytest.param(60, 5, id="60s-5kills",
                                                      marks=pytest.mark.slow)],
)  # fmt: skip
def test_two_receivers_one_destination_exactly_once_through_kills(
    tmp_path: Path,
    processes: Processes,
    pg_server: PostgresServer,
    nats_cluster: NatsCluster,
    broker: Tansu,
    seconds: float,
    kills: int,
) -> None:
    tag = f"scale{os.getpid()}x{int(seconds)}"
    dsn = pg_server.create_database(tag)
    token, password = write_secrets(tmp_path)
    receivers = [
        Receiver(processes, tmp_path, name,
                 receiver_config(name, dsn, nats_cluster, broker.bootstrap, tag, token, password))
        for name in ("r1", "r2")
    ]  # fmt: skip
    for r in receivers:
        r.start()
    front = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(front, [(r.port, r.admin) for r in receivers]))
    haproxy = processes.spawn(["haproxy", "-db", "-f", str(cfg)], "haproxy")
    url = f"http://127.0.0.1:{front}/events"

    def through_haproxy() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{front}/nope", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 404  # a receiver answered
        except OSError:
            return False
        return False

    wait_for(through_haproxy, timeout=20, what="HAProxy in front of the receivers",
             context=haproxy.stderr)  # fmt: skip
    acked = {mode: tmp_path / f"acked-{mode}.txt" for mode in ("legacy", "io")}
    senders = [
        _emit(processes, url, "legacy", seconds, token, acked["legacy"], 1500, 3),
        _emit(processes, url, "io", seconds, token, acked["io"], 300, 4),
    ]
    victim = receivers[0]
    lag_at_kill: list[dict[str, float]] = []
    started = time.monotonic()
    for k in range(kills):
        time.sleep(max(0.0, started + seconds * (k + 1) / (kills + 1) - time.monotonic()))
        lag_at_kill.append(victim.lag())
        victim.kill()
        time.sleep(1.0)
        victim.start()
    for sender in senders:
        assert sender.wait(timeout=seconds + 180) == 0
    everything: set[str] = set()
    for path in acked.values():
        everything |= {line for line in path.read_text().split() if line}
    assert len(everything) > 1000, "the senders got too little through to prove anything"
    wait_for(
        lambda: all(not any(r.lag().values()) for r in receivers),
        timeout=120,
        what="both receivers' sinks caught up",
        context=lambda: victim.server.spawned.stderr()[-2000:] if victim.server else "",
    )
    journaled = set(receivers[0].journal_keys()) | set(receivers[1].journal_keys())
    assert everything <= journaled

    # PostgreSQL: every acknowledged event once (the key is the primary key: never twice).
    with psycopg.connect(dsn, password=PASSWORD) as conn:
        rows = [str(r[0]) for r in conn.execute("SELECT event_key FROM streamd_events")]
    assert len(rows) == len(set(rows))
    assert everything <= set(rows) and set(rows) <= journaled
    # JetStream: every acknowledged event once, by Nats-Msg-Id.
    stored = Counter(m.headers["Nats-Msg-Id"] for m in nats_cluster.messages(tag.upper()))
    assert everything <= set(stored) and set(stored) <= journaled
    assert max(stored.values()) == 1, stored.most_common(3)
    # Kafka: at least once; the copies are counted.
    copies: Counter[str] = Counter()
    for topic in [t for t in broker.topics() if t.startswith(f"{tag}.")]:
        copies.update(m.key.decode() for m in broker.read(topic) if m.key is not None)
    missing = everything - set(copies)
    where = {r.name: set(r.journal_keys()) for r in receivers}
    assert not missing, (
        f"{len(missing)} acknowledged events are not in the topic; journaled by: "
        + str(Counter(",".join(n for n, keys in where.items() if k in keys) for k in missing))
        + f"; e.g. {sorted(missing)[:3]}"
    )
    assert set(copies) <= journaled
    both = len(set(receivers[0].journal_keys()) & set(receivers[1].journal_keys()))
    print(
        f"scale-out: {len(everything)} acknowledged events, {len(journaled)} journaled "
        f"({both} by both receivers), {kills} SIGKILLs of r1 with sink lag at each kill "
        f"{lag_at_kill}; postgres {len(rows)} rows, jetstream {sum(stored.values())} "
        f"messages, kafka {sum(copies.values())} messages ({sum(copies.values()) - len(copies)} "
        f"duplicates)"
    )
