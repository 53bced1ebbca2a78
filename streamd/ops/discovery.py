"""Which daemon owns a journal, and how to reach its admin listener.

A running ``streamd serve`` writes ``daemon.json`` beside its journal once its
listeners are up (and removes it when it stops): its pid, the journal's id, its
admin listener's URLs and admin token file. A command that names a journal
(``--journal``, ``--data-dir`` or ``--config``) finds its daemon through that
file only: never from the current directory, never from a default port. Whether
a daemon runs at all is the journal's writer lock (a stale file of a killed
daemon is ignored).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import msgspec

from streamd.errors import StreamdError

DAEMON_FILE = "daemon.json"
_MAX_BYTES = 64 * 1024


class DaemonUnreachable(StreamdError):
    """Raised when a daemon holds the journal but cannot be reached to make a change:
    no daemon file, its admin listener is off, or its token cannot be read."""


class DaemonInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What a running daemon says about itself in ``daemon.json``."""

    pid: int
    journal: str
    journal_id: str
    admin_urls: list[str]
    admin_token_file: str | None
    started_at: str


def daemon_file(journal: str) -> str:
    """Where the daemon that owns ``journal`` describes itself."""
    return os.path.join(os.path.dirname(os.path.abspath(journal)), DAEMON_FILE)


def write_daemon_file(info: DaemonInfo) -> str:
    """Write ``info`` beside its journal (temp file, fsync, rename; mode 0644: it holds
    no secret, only where the token file is). Returns the path."""
    path = daemon_file(info.journal)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, msgspec.json.encode(info) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def remove_daemon_file(journal: str, pid: int) -> None:
    """Remove the daemon file if it is still this process's (a stop)."""
    path = daemon_file(journal)
    try:
        info = _read(path)
    except (OSError, msgspec.MsgspecError):
        return
    if info.pid == pid:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _read(path: str) -> DaemonInfo:
    with open(path, "rb") as f:
        data = f.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise msgspec.DecodeError("too large")
    return msgspec.json.decode(data, type=DaemonInfo)


def running_daemon(journal: str) -> bool:
    """True when a streamd process holds the journal's writer lock."""
    from streamd.journal.writer import writer_lock_held

    return writer_lock_held(journal)


def find_daemon(journal: str) -> DaemonInfo:
    """The daemon holding ``journal`` (call when :func:`running_daemon` is true).

    Raises :class:`DaemonUnreachable` naming the journal, the file and what to do
    when it left no usable daemon file, or the file belongs to another journal.
    """
    path = daemon_file(journal)
    try:
        info = _read(path)
    except FileNotFoundError:
        raise DaemonUnreachable(
            f"streamd is running on {journal}, but there is no {path} (a streamd from "
            "before daemon files?): give --admin-url, or stop it to make this change offline"
        ) from None
    except (OSError, msgspec.MsgspecError) as exc:
        raise DaemonUnreachable(f"{path}: cannot read the daemon file: {exc}") from None
    if os.path.abspath(info.journal) != os.path.abspath(journal):
        raise DaemonUnreachable(
            f"{path} describes the daemon of {info.journal}, not of {journal}: "
            "give --admin-url, or stop streamd to make this change offline"
        )
    return info


def journal_id_of(path: str) -> str | None:
    """The id of the journal at ``path`` (read-only), or None when it cannot be read."""
    import sqlite3

    from streamd.journal.schema import sqlite_uri

    try:
        conn = sqlite3.connect(sqlite_uri(path), uri=True)
    except (sqlite3.Error, OSError, ValueError):
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to send a change to the daemon that owns a journal."""

    url: str
    token_file: str | None
    journal_id: str | None


def endpoint(journal: str, *, admin_url: str | None, token_file: str | None) -> Endpoint:
    """The admin endpoint of the daemon holding ``journal``: ``admin_url`` and
    ``token_file`` when given, else what its daemon file says. Raises
    :class:`DaemonUnreachable`."""
    if admin_url is not None:
        try:
            info: DaemonInfo | None = find_daemon(journal)
        except DaemonUnreachable:
            info = None
        token = token_file or (info.admin_token_file if info else None)
        if token is None:
            token = os.path.join(os.path.dirname(os.path.abspath(journal)), "admin-token")
        # The daemon refuses (409) when it writes another journal than the one named.
        return Endpoint(admin_url, token, info.journal_id if info else journal_id_of(journal))
    info = find_daemon(journal)
    if not info.admin_urls:
        raise DaemonUnreachable(
            f"streamd (pid {info.pid}) is running on {journal} with its admin listener off "
            "(admin.listen): turn it on, or stop streamd to make this change offline"
        )
    return Endpoint(info.admin_urls[0], token_file or info.admin_token_file, info.journal_id)
