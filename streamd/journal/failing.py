"""When journal commits fail: which errors mean the journal cannot be written, and the
writer's failing state that readiness and the watchdog read.

A group commit that fails as a whole (another process's write lock, a full disk, a
file size limit, I/O errors) puts the writer in the failing state, with the time it
began and the last reason; the next successful commit ends it. While it lasts and
nothing waits, the writer runs :func:`probe` once a second, so the state ends by itself
once the cause is gone, before any sender has to try a batch (``/readyz`` would
otherwise stay unready on an idle daemon).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from typing import Protocol

log = logging.getLogger("streamd.journal")

# SQLite's primary result codes that say the journal cannot be written now, whatever
# the batch: another process's lock, a full disk or file size limit (EFBIG is an I/O
# error to SQLite), I/O errors, a read-only or damaged file. Retrying such a group
# batch by batch would only fail again, one busy_timeout per batch.
_JOURNAL_WIDE = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)
# A transaction that really writes (two pages of meta, back as they were at COMMIT), so
# a held lock, a full disk or a file size limit fail it; nothing of it stays.
_PROBE = (
    "INSERT OR REPLACE INTO main.meta VALUES ('writer_probe', '')",
    "DELETE FROM main.meta WHERE key = 'writer_probe'",
)
_LOG_EVERY = 10.0  # seconds between two "commits are failing" lines when they flap


class _Counters(Protocol):
    """The writer statistics this module keeps (see WriterStatistics)."""

    failing_since: float | None
    failing_reason: str | None
    commit_failures: int


def journal_wide(exc: BaseException) -> bool:
    """Does this error say the journal cannot be written now, whatever the batch?"""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _JOURNAL_WIDE


def describe(exc: BaseException) -> str:
    """An error for operators: SQLite's message and its (extended) code name."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction; after some errors SQLite has already rolled it back
    (or cannot), and that must never end the writer thread."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def probe(conn: sqlite3.Connection) -> None:
    """One small transaction that writes and commits (on the writer's connection).

    Raises ``sqlite3.Error`` (rolled back) when the journal cannot be written.
    """
    try:
        conn.execute("BEGIN")
        for sql in _PROBE:
            conn.execute(sql)
        conn.execute("COMMIT")
    except sqlite3.Error:
        rollback(conn)
        raise


class FailingState:
    """Keeps ``failing_since``/``failing_reason``/``commit_failures`` in the writer's
    statistics, and logs each episode once (at most one line per 10 s when it flaps)."""

    def __init__(self, stats: _Counters) -> None:
        self._stats = stats
        self._logged_at = float("-inf")
        self._logged = False

    def failed(self, exc: BaseException) -> str:
        """A group commit or a probe failed; returns the reason as recorded."""
        stats = self._stats
        reason = describe(exc)
        stats.commit_failures += 1
        stats.failing_reason = reason  # before failing_since: readers check that first
        if stats.failing_since is None:
            stats.failing_since = time.time()
            now = time.monotonic()
            if now - self._logged_at >= _LOG_EVERY:
                self._logged_at = now
                self._logged = True
                log.error("journal commits are failing: %s; answering 503 meanwhile", reason)
        return reason

    def recovered(self) -> None:
        """A commit (or probe) succeeded: commits no longer fail."""
        stats = self._stats
        since = stats.failing_since
        if since is None:
            return
        stats.failing_since = None
        stats.failing_reason = None
        if self._logged:
            self._logged = False
            log.warning(
                "journal commits succeed again (they failed for %.1f s)", time.time() - since
            )
