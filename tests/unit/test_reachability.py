"""check-config tries the shared engines' addresses: unreachable ones are warnings."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from streamd.service.config import load_config
from streamd.service.reachability import engine_addresses, unreachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, pg: int, kafka: int, nats: int) -> Path:
    path = tmp_path / "streamd.toml"
    path.write_text(
        f"""
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
    )
    return path


def test_every_engine_address_is_listed_and_unix_sockets_are_left_out(tmp_path: Path) -> None:
    config = load_config(str(_config(tmp_path, 5433, 9093, 4223)))
    assert list(engine_addresses(config)) == [
        ("sinks[0] (warehouse)", "127.0.0.1", 5433),
        ("sinks[1] (bus)", "127.0.0.1", 9093),
        ("sinks[2] (stream)", "127.0.0.1", 4223),
    ]


def test_only_the_unreachable_ones_warn(tmp_path: Path) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        open_port = int(listening.getsockname()[1])
        closed = _closed_port()
        config = load_config(str(_config(tmp_path, open_port, closed, open_port)))
        warnings = unreachable(config, timeout=2.0)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"sinks[1] (bus): cannot reach 127.0.0.1:{closed} (")
    assert "the journal keeps the events" in warnings[0]


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
