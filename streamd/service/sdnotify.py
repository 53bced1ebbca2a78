"""systemd's notify protocol without a dependency: one datagram per message.

``$NOTIFY_SOCKET`` names an ``AF_UNIX`` datagram socket (a path, or ``@name``
for the abstract namespace). When it is unset every call does nothing, so the
daemon behaves the same outside systemd. Sending never raises: a lost status
line must never stop ingest; the first failure is logged.

The watchdog interval comes from ``$WATCHDOG_USEC`` (when ``$WATCHDOG_PID`` is
unset or names this process); systemd expects a ``WATCHDOG=1`` within it, and
the daemon sends one at half of it, only while its parts make progress.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("streamd.systemd")

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends ``KEY=value`` lines to systemd, or nothing when not under systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        elif address:
            log.warning("ignoring NOTIFY_SOCKET=%r: not a path or @abstract name", address)
        self._sock: socket.socket | None = None
        self._failed = False
        self.watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send one message of ``KEY=value`` fields; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %r: %s", self._address, exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (253+) tell this reload from an older one.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def take_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Remove systemd's notify variables from the environment and return them.

    Children (``exec`` sinks, hooks) must not inherit them: a child that
    notifies would speak for the daemon.
    """
    env = os.environ if environ is None else environ
    return {name: env.pop(name) for name in _ENV if name in env}


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    return usec if usec > 0 else None
