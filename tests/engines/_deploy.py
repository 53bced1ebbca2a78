"""Receivers of the multi-receiver tests and benchmarks: ``streamd serve`` at fixed
ports with the shared engines' sinks, and docs/scale-out.md's HAProxy configuration."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

from tests.docs._markdown import REPO
from tests.engines._nats import NatsCluster
from tests.system._harness import Processes, Server, free_port, streamd_argv

TOKEN = "scale-out-token-0123456789abcdef"


def write_secrets(root: Path) -> tuple[Path, Path]:
    """The receivers' shared API token file and the PostgreSQL password file."""
    from tests.engines._postgres import PASSWORD

    token, password = root / "api-token", root / "pg-password"
    token.write_text(TOKEN + "\n")
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    return token, password


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


def metric(text: str, name: str, **labels: str) -> float | None:
    """The sample of ``name`` with exactly these labels (in any order), or None."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return None


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
            sink: metric(text, "streamd_sink_lag_events", sink=sink) or 0.0
            for sink in ("warehouse", "stream", "bus")
        }

    def journal_keys(self) -> list[str]:
        import sqlite3

        with sqlite3.connect(f"file:{self.data / 'journal.db'}?mode=ro", uri=True) as conn:
            return [str(r[0]) for r in conn.execute("SELECT event_key FROM events")]


def receiver_config(name: str, dsn: str, nats: NatsCluster, kafka: str, tag: str,
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
