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
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.docs._markdown import REPO
from tests.engines._kafka import Tansu
from tests.engines._nats import NatsCluster
from tests.engines._postgres import PASSWORD, PostgresServer
from tests.system._harness import Processes, Server, free_port, streamd_argv, wait_for

TOKEN = "scale-out-token-0123456789abcdef"


def haproxy_config(front: int, backends: list[tuple[int, int]]) -> str:
    """docs/scale-out.md's HAProxy configuration with loopback addresses."""
    page = (REPO / "docs" / "scale-out.md").read_text()
    block = re.search(r"```haproxy\n(.*?)```", page, re.S)
    assert block is not None, "docs/scale-out.md lost its HAProxy configuration"
    text = block.group(1)
    text, bound = re.subn(r"(?m)^(\s*bind )\S+.*$", rf"\g<1>127.0.0.1:{front}", text)
    assert bound == 1
    servers = re.findall(r"(?m)^\s*server .*$", text)
    assert len(servers) == len(backends), servers
    for line, (port, admin) in zip(servers, backends, strict=True):
        name = line.split()[1]
        text = text.replace(line, f"    server {name} 127.0.0.1:{port} check port {admin}")
    return text


def _metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"(?m)^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


class Receiver:
    """One ``streamd serve`` at fixed ports (HAProxy knows them), restartable."""

    def __init__(self, processes: Processes, root: Path, name: str, config: str) -> None:
        self.processes, self.name = processes, name
        self.data = root / name
        self.port, self.admin = free_port(), free_port()
        self.config = root / f"{name}.toml"
        self.config.write_text(config)
        self.server: Server | None = None
        self.starts = 0

    def start(self) -> None:
        argv = [*streamd_argv(), "serve", "--config", str(self.config), "--listen",
                f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin}",
                "--data-dir", str(self.data)]  # fmt: skip
        self.starts += 1
        spawned = self.processes.spawn(argv, f"{self.name}-{self.starts}")
        self.server = Server(spawned, self.data)
        self.server.wait_ready(timeout=30)

    def kill(self) -> None:
        assert self.server is not None
        self.server.spawned.popen.kill()
        assert self.server.spawned.wait(10) == -signal.SIGKILL

    def metrics(self) -> str:
        token = (self.data / "admin-token").read_text().split()[0]
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(answer.read().decode())

    def lag(self) -> dict[str, float]:
        text = self.metrics()
        return {
            sink: _metric(text, "streamd_sink_lag_events", sink=sink) or 0.0
            for sink in ("warehouse", "stream", "bus")
        }

    def journal_keys(self) -> list[str]:
        import sqlite3

        with sqlite3.connect(f"file:{self.data / 'journal.db'}?mode=ro", uri=True) as conn:
            return [str(r[0]) for r in conn.execute("SELECT event_key FROM events")]


def _receiver_config(name: str, dsn: str, nats: NatsCluster, kafka: str, tag: str,
                     token: Path, password: Path) -> str:  # fmt: skip
    servers = ", ".join(f'"{u}"' for u in nats.urls)
    return f"""
instance = "{name}"

[tokens]
files = ["{token}"]

[[sinks]]
name = "warehouse"
kind = "postgres"
[sinks.postgres]
dsn = "{dsn}"
password_file = "{password}"
[sinks.retry]
backoff_base = 0.1
backoff_cap = 1
probe_interval = 1

[[sinks]]
name = "stream"
kind = "nats"
[sinks.nats]
servers = [{servers}]
stream = "{tag.upper()}"
subject = "{tag}.{{stream}}"
replicas = 3
duplicate_window = 600
[sinks.retry]
backoff_base = 0.1
backoff_cap = 1
probe_interval = 1

[[sinks]]
name = "bus"
kind = "kafka"
[sinks.kafka]
bootstrap_servers = ["{kafka}"]
topic = "{tag}.{{stream}}"
[sinks.retry]
backoff_base = 0.1
backoff_cap = 1
probe_interval = 1
"""


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
    [pytest.param(16, 2, id="16s-2kills"), pytest.param(60, 5, id="60s-5kills",
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
    token = tmp_path / "api-token"
    token.write_text(TOKEN + "\n")
    password = tmp_path / "pg-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    receivers = [
        Receiver(processes, tmp_path, name,
                 _receiver_config(name, dsn, nats_cluster, broker.bootstrap, tag, token, password))
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
