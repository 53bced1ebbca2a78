"""The journal's writer lock: an ``flock`` on ``<journal>.lock`` held by the one process
that writes the journal (the kernel drops it when that process dies)."""

from __future__ import annotations

import fcntl
import os

from streamd.errors import JournalError


def lock_path(journal_path: str) -> str:
    """The lock file held by the process that writes a journal."""
    return journal_path + ".lock"


def writer_lock_held(journal_path: str) -> bool:
    """True when a process (a running streamd) holds the journal's writer lock.

    Opens the lock file read-only, never creating it (the callers only read), and
    asks for a shared lock without waiting.
    """
    try:
        fd = os.open(lock_path(journal_path), os.O_RDONLY)
    except OSError:
        return False  # no lock file: no streamd ever wrote this journal here
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops a shared lock we got
    return False


def hold_writer_lock(journal_path: str) -> int:
    """Take the journal's writer lock (an ``flock`` the kernel drops when the process dies).

    Returns the descriptor to close on release. Raises :class:`JournalError`
    when another process (a running streamd) holds it.
    """
    path = lock_path(journal_path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise JournalError(f"{path}: cannot open the lock file: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise JournalError(
            f"{journal_path}: another process (a running streamd) is writing this journal"
        ) from None
    return fd
