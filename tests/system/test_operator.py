"""Operator commands reach the daemon that owns the journal they name, and no other.

Issue 14: ``sinks pause alerts --data-dir X`` (X's daemon listening for admin on one
port) went to the default admin address, where another daemon answered 401; and the
test suite failed after ``make run`` because a command found ``./streamd-data``.
Here two real daemons run side by side, one of them on the current directory's
default data directory, and each command must reach the one its journal names.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from ._harness import Processes, serve, streamd_argv

CONFIG = """
[[sinks]]
name = "alerts"
kind = "file"
[sinks.file]
directory = "{out}"
"""


def _config(processes: Processes, name: str) -> Path:
    path = processes.workdir / f"{name}.toml"
    path.write_text(CONFIG.format(out=processes.workdir / f"{name}-out"))
    return path


def _state(processes: Processes, *where: str) -> str:
    done = processes.run([*streamd_argv(), "sinks", "list", "--json", *where])
    assert done.returncode == 0, done.stderr
    (sink,) = json.loads(done.stdout)
    return str(sink["state"])


def test_each_command_reaches_the_daemon_of_the_journal_it_names(processes: Processes) -> None:
    here = processes.workdir / "streamd-data"  # what `make run` leaves in the current directory
    there = processes.workdir / "a"
    local = serve(processes, here, args=["--config", str(_config(processes, "here"))], name="here")
    remote = serve(processes, there, args=["--config", str(_config(processes, "a"))], name="a")
    for server in (local, remote):
        info = json.loads((server.data_dir / "daemon.json").read_text())
        assert info["journal"] == str(server.journal.resolve())
        assert info["admin_urls"][0].startswith("http://127.0.0.1:")

    done = processes.run([*streamd_argv(), "sinks", "pause", "alerts", "--data-dir", str(there)])
    assert (done.returncode, done.stdout) == (0, "sink alerts: paused\n"), done.stderr
    assert "HTTP Request" not in done.stderr  # no client library chatter before our answer
    assert _state(processes, "--data-dir", str(there)) == "paused"
    assert _state(processes) == "active"  # the current directory's daemon: untouched

    done = processes.run([*streamd_argv(), "sinks", "pause", "alerts"])  # names ./streamd-data
    assert done.returncode == 0, done.stderr
    assert _state(processes) == "paused"

    # A daemon that stops takes its daemon.json along; the change is then made offline.
    remote.spawned.send_signal(signal.SIGTERM)
    assert remote.spawned.wait(30) == 0
    assert not (there / "daemon.json").exists()
    resume = [*streamd_argv(), "sinks", "resume", "alerts", "--data-dir", str(there)]
    done = processes.run(resume)
    assert (done.returncode, done.stdout) == (0, "sink alerts: active\n"), done.stderr
    assert _state(processes, "--data-dir", str(there)) == "active"


def test_a_wrong_token_names_the_url_and_the_fix(processes: Processes, tmp_path: Path) -> None:
    server = serve(
        processes, processes.workdir / "d", args=["--config", str(_config(processes, "d"))]
    )
    wrong = tmp_path / "wrong-token"
    wrong.write_text("x" * 40 + "\n")
    argv = [*streamd_argv(), "sinks", "pause", "alerts", "--data-dir", str(server.data_dir)]
    done = processes.run([*argv, "--token-file", str(wrong)])
    assert done.returncode == 1
    info = json.loads((server.data_dir / "daemon.json").read_text())
    assert f"{info['admin_urls'][0]}/sinks/pause: HTTP 401" in done.stderr
    assert "give --token-file" in done.stderr and "Traceback" not in done.stderr
    assert _state(processes, "--data-dir", str(server.data_dir)) == "active"  # refused: unchanged
