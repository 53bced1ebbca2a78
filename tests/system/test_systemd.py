"""The real daemon as systemd runs it: socket activation and the notify protocol.

``systemd-socket-activate`` binds the port and execs ``streamd serve`` with
``LISTEN_FDS``; a datagram socket of the test plays systemd's notify socket.
"""

from __future__ import annotations

import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._harness import (
    READY,
    Processes,
    fixture_bytes,
    free_port,
    post,
    read_token,
    streamd_argv,
    wait_for,
)

ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate missing (make test installs systemd)"
)
TOKEN = "sd_systemd-test-token"


class NotifySocket:
    """The test's stand-in for systemd's notify socket: records every message, timed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str, since: float = 0.0) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m and t >= since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


@needs_activate
def test_socket_activation_ready_watchdog_reload_and_stop(
    processes: Processes, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    assert ACTIVATE is not None
    port = free_port()
    data_dir = tmp_path / "data"
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = tmp_path / "streamd.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n[tokens]\nfiles = ["{token_file}"]\n'
        '[admin]\nlisten = "127.0.0.1:0"\n'  # not 8081, which a running streamd may hold
    )
    argv = [
        ACTIVATE,
        "--listen",
        f"127.0.0.1:{port}",
        "-E",
        f"NOTIFY_SOCKET={notify_socket.path}",
        "-E",
        "WATCHDOG_USEC=2000000",
        "-E",
        "PYTHONUNBUFFERED=1",
        "--",
        *streamd_argv(),
        "serve",
        "--config",
        str(config),
    ]
    daemon = processes.spawn(argv, "streamd-activated")
    wait_for(
        lambda: "Listening on" in daemon.stderr(),
        timeout=10,
        what="systemd-socket-activate to listen",
        context=daemon.stderr,
    )

    def log() -> str:
        return daemon.stderr()

    # The first connection makes systemd-socket-activate exec streamd, which then
    # serves the very socket that connection waits on.
    reply = post(port, fixture_bytes("legacy_push.json"), token=TOKEN)
    assert reply.status == 200, reply
    assert reply.body == {"accepted": 4, "duplicates": 0}
    assert "socket activation: serving the 1 socket(s) systemd passed" in log()

    ready = wait_for(lambda: notify_socket.having("READY"), timeout=10, what="READY=1")
    ready_at, first = ready[0]
    assert first["READY"] == "1"
    assert first["STATUS"].startswith(f"listening on http://127.0.0.1:{port}")
    # Watchdog pings at half of WATCHDOG_USEC while the writer is healthy.
    wait_for(
        lambda: len(notify_socket.having("WATCHDOG", since=ready_at)) >= 3,
        timeout=10,
        what="three WATCHDOG=1 pings",
    )
    assert notify_socket.having("STATUS", since=ready_at)

    # A wedged writer: another connection holds the journal's write lock, so the
    # next commit waits (SQLite's busy timeout, 5 s). Pings must stop meanwhile.
    blocker = sqlite3.connect(data_dir / "journal.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    wedged_at = time.monotonic()
    replies: list[int] = []
    sender = threading.Thread(
        target=lambda: replies.append(
            post(port, fixture_bytes("lads_batch.json"), token=TOKEN).status
        )
    )
    sender.start()
    wait_for(
        lambda: "withholding watchdog pings" in log(),
        timeout=10,
        what="the watchdog to notice the wedged writer",
        context=log,
    )
    withheld_at = time.monotonic()
    time.sleep(1.5)  # three ping intervals
    assert notify_socket.having("WATCHDOG", since=withheld_at) == []
    blocker.execute("ROLLBACK")
    blocker.close()
    sender.join(30)
    assert replies and replies[0] in (200, 503)  # 503 + Retry-After if the budget ran out
    wait_for(
        lambda: notify_socket.having("WATCHDOG", since=time.monotonic() - 0.1),
        timeout=10,
        what="pings to resume once the writer commits again",
    )
    assert withheld_at - wedged_at < 6

    # SIGHUP: RELOADING=1, then READY=1 again; a new token works afterwards.
    token_file.write_text(f"{TOKEN}\nsd_rotated-token-after-reload\n")
    hup_at = time.monotonic()
    daemon.send_signal(signal.SIGHUP)
    wait_for(
        lambda: notify_socket.having("READY", since=hup_at),
        timeout=10,
        what="READY=1 after the reload",
    )
    reloading = notify_socket.having("RELOADING", since=hup_at)
    assert reloading and "MONOTONIC_USEC" in reloading[0][1]
    assert reloading[0][0] <= notify_socket.having("READY", since=hup_at)[0][0]
    assert "configuration reloaded" in log()
    fresh = post(port, fixture_bytes("notification.json"), token="sd_rotated-token-after-reload")
    assert fresh.status == 200

    # An invalid configuration is refused; the old one keeps serving.
    config.write_text(config.read_text() + "\n[server]\nnonsense = 1\n")
    bad_at = time.monotonic()
    daemon.send_signal(signal.SIGHUP)
    wait_for(
        lambda: notify_socket.having("READY", since=bad_at),
        timeout=10,
        what="READY=1 after the refused reload",
    )
    assert "configuration not reloaded, keeping the old one" in log()
    assert "nonsense" in log()
    again = post(port, fixture_bytes("audit_wrapper.json"), token="sd_rotated-token-after-reload")
    assert again.status == 200

    stop_at = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    stopping = notify_socket.having("STOPPING", since=stop_at)
    assert stopping and stopping[0][1]["STOPPING"] == "1"
    assert "Traceback" not in log()


MDWE_WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: the kernel's own MemoryDenyWriteExecute (6.3+)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_the_stack_runs_with_memory_deny_write_execute(
    processes: Processes, tmp_path: Path
) -> None:
    # The unit sets MemoryDenyWriteExecute=yes; no systemd here, but the kernel's
    # PR_SET_MDWE gives the same refusal of writable+executable memory to the process.
    probe = subprocess.run(
        [sys.executable, "-c", MDWE_WRAPPER, sys.executable, "-c", "pass"], check=False
    )
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert probe.returncode == 0
    data_dir = tmp_path / "data"
    argv = [sys.executable, "-c", MDWE_WRAPPER, *streamd_argv(), "serve"]
    argv += ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    argv += ["--admin-listen", "127.0.0.1:0"]  # not 8081, which a running streamd may hold
    daemon = processes.spawn(argv, "streamd-mdwe")
    match = wait_for(
        lambda: READY.search(daemon.stdout()), timeout=20, what="ready", context=daemon.stderr
    )
    assert match is not None
    token = read_token(data_dir / "api-token")
    reply = post(int(match.group(1)), fixture_bytes("lads_batch.json"), token=token)
    assert reply.status == 200, reply
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert "Traceback" not in daemon.stderr()
