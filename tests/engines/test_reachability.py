"""check-config asks each shared engine's address for the first exchange of its
protocol: real servers answer; a closed port, a silent listener (a proxy that accepts
anything) or another protocol are warnings, and check-config still succeeds."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.service.config import load_config
from streamd.service.reachability import engine_addresses, unreachable
from tests.engines._kafka import Tansu
from tests.engines._nats import NatsCluster
from tests.engines._postgres import PostgresServer


def _config(tmp_path: Path, pg: int, kafka: int, nats: int, lease: int | None = None) -> Path:
    path = tmp_path / "streamd.toml"
    text = f"""
data_dir = "{tmp_path / "data"}"
[[sinks]]
name = "warehouse"
kind = "postgres"
[sinks.postgres]
dsn = "host=127.0.0.1,/run/postgresql port={pg},5432 dbname=m user=s"
[[sinks]]
name = "bus"
kind = "kafka"
[sinks.kafka]
bootstrap_servers = ["127.0.0.1:{kafka}"]
[[sinks]]
name = "stream"
kind = "nats"
[sinks.nats]
servers = ["nats://127.0.0.1:{nats}"]
"""
    if lease is not None:
        secret = tmp_path / "secret"
        secret.write_text("s3cret\n")
        text += f"""
[[pulls]]
name = "journal"
url = "https://events.example/journal"
org_id = "ORG@AdobeOrg"
client_id = "c"
client_secret_file = "{secret}"
scope = "AdobeID"
[pulls.lease]
dsn = "host=127.0.0.1 port={lease} user=s"
"""
    path.write_text(text)
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent() -> Iterator[int]:
    """A listener that accepts and says nothing (what a transparent proxy does)."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        yield int(listening.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[int]:
    """A listener that answers every connection with an HTTP error (another protocol)."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    done = threading.Event()

    def serve() -> None:
        listening.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = listening.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listening.getsockname()[1])
    finally:
        done.set()
        thread.join(5)
        listening.close()


def test_every_engine_address_is_listed_and_unix_sockets_are_left_out(tmp_path: Path) -> None:
    config = load_config(str(_config(tmp_path, 5433, 9093, 4223, lease=5434)))
    assert list(engine_addresses(config)) == [
        ("sinks[0] (warehouse)", "postgres", "127.0.0.1", 5433),
        ("sinks[1] (bus)", "kafka", "127.0.0.1", 9093),
        ("sinks[2] (stream)", "nats", "127.0.0.1", 4223),
        ("pulls[0].lease (journal)", "postgres", "127.0.0.1", 5434),
    ]


def test_real_servers_answer(
    tmp_path: Path, pg_server: PostgresServer, broker: Tansu, nats_cluster: NatsCluster
) -> None:
    nats_port = int(nats_cluster.urls[0].rsplit(":", 1)[1])
    kafka_port = int(broker.bootstrap.rsplit(":", 1)[1])
    config = load_config(str(_config(tmp_path, pg_server.port, kafka_port, nats_port,
                                     lease=pg_server.port)))  # fmt: skip
    assert unreachable(config) == []


def test_closed_silent_and_foreign_addresses_warn(
    tmp_path: Path, silent: int, http_server: int, pg_server: PostgresServer
) -> None:
    closed = _closed_port()
    config = load_config(str(_config(tmp_path, silent, http_server, closed, lease=pg_server.port)))
    warnings = unreachable(config, timeout=1.0)
    assert warnings == [
        f"sinks[0] (warehouse): cannot reach 127.0.0.1:{silent} (no postgres answer within "
        "1 s); streamd starts anyway and the journal keeps the events until it can",
        f"sinks[1] (bus): cannot reach 127.0.0.1:{http_server} (what answered there is not "
        "a kafka server); streamd starts anyway and the journal keeps the events until it can",
        f"sinks[2] (stream): cannot reach 127.0.0.1:{closed} (Connection refused); streamd "
        "starts anyway and the journal keeps the events until it can",
    ]


def test_check_config_warns_and_still_succeeds(tmp_path: Path) -> None:
    closed = _closed_port()
    path = _config(tmp_path, closed, closed, closed)
    done = subprocess.run(
        [sys.executable, "-m", "streamd", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("cannot reach 127.0.0.1:") == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert ": ok — " in done.stdout
