"""systemd's notify protocol and socket activation, against real AF_UNIX sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.errors import ConfigError
from streamd.service.listeners import activated_binds
from streamd.service.sdnotify import Notifier, take_environment


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


def test_messages_arrive_as_systemd_reads_them(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("listening on http://127.0.0.1:8080")
    assert sock.recv(4096) == b"READY=1\nSTATUS=listening on http://127.0.0.1:8080"
    assert notifier.status("two\nlines")  # a newline would start a new field: flattened
    assert sock.recv(4096) == b"STATUS=two lines"
    notifier.reloading()
    fields = sock.recv(4096).decode().split("\n")
    assert fields[0] == "RELOADING=1"
    assert fields[1].startswith("MONOTONIC_USEC=") and int(fields[1].split("=")[1]) > 0
    notifier.extend_timeout(2.5)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping("bye")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    notifier.close()


def test_abstract_namespace_address() -> None:
    name = f"streamd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    try:
        assert notifier.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        notifier.close()
        sock.close()


def test_without_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_usec is None


def test_a_bad_or_gone_socket_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relative = Notifier({"NOTIFY_SOCKET": "relative/path"})
    assert not relative.enabled
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled
    assert not gone.watchdog()
    assert not gone.watchdog()
    gone.close()
    # One warning, not one per ping.
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1
    assert any("not a path or @abstract name" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "3000000"}, 3_000_000),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 3_000_000),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: int | None) -> None:
    assert Notifier(env).watchdog_usec == expected


def test_children_do_not_inherit_the_notify_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    taken = take_environment(env)
    assert taken == {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2"}
    assert env == {"PATH": "/bin"}


def test_socket_activation_variables() -> None:
    me = str(os.getpid())
    env = {"LISTEN_PID": me, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "PATH": "/bin"}
    assert activated_binds(env) == ["fd://3", "fd://4"]
    assert env == {"PATH": "/bin"}  # consumed
    assert activated_binds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) is None  # not ours
    assert activated_binds({}) is None
    for bad in ("0", "x", "65", "-1"):
        with pytest.raises(ConfigError, match="LISTEN_FDS"):
            activated_binds({"LISTEN_PID": me, "LISTEN_FDS": bad})
