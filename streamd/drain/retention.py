"""Retention: delete old events every live sink confirmed, and keep the journal under a cap.

Deletes run through the journal writer (``Journal.control``) in chunks of
``chunk`` events, each its own small op in a group transaction, so ingest
commits never wait behind a long delete. An event is deleted only when every
configured sink that is not disabled has its cursor at or past it, and the
newest event is always kept (its ``seq`` is where the writer continues after
a restart: deleting it would hand out sequence numbers below the cursors).

The size cap counts the pages ``journal.db`` uses (the file itself only
shrinks with VACUUM; freed pages are reused). Over the cap, ``refuse`` makes
ingest answer 503 + ``Retry-After`` until retention brings it back under;
``drop_confirmed`` first deletes confirmed events regardless of age, oldest
first, and refuses only when what is left is unconfirmed. Unconfirmed events
are never dropped.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import trio

from streamd.core.timeparse import format_utc
from streamd.drain import store
from streamd.journal import Journal

log = logging.getLogger("streamd.retention")


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    max_age: float = 7 * 86_400.0
    max_bytes: int = 0  # 0: no cap
    policy: str = "refuse"  # or "drop_confirmed"
    interval: float = 60.0
    chunk: int = 1000


@dataclass(slots=True)
class RetentionStatistics:
    deleted: int = 0
    runs: int = 0
    refusing: bool = False
    used_bytes: int = 0


def delete_chunk(conn: sqlite3.Connection, sinks: Sequence[str], before: int, limit: int) -> int:
    """Delete up to ``limit`` of the oldest events with ``seq <= before`` that every live
    sink in ``sinks`` passed; never the newest event. Returns how many."""
    params = list(sinks)
    marks = ",".join("?" * len(params))
    cursor = (
        conn.execute(
            f"SELECT min(cursor) FROM sinks WHERE state != 'disabled' AND name IN ({marks})",  # noqa: S608
            params,
        ).fetchone()[0]
        if params
        else None
    )
    last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    upper = min(before, last - 1, cursor if cursor is not None else last)
    if upper <= 0:
        return 0
    return conn.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ? ORDER BY seq "
        "LIMIT ?)",
        (upper, limit),
    ).rowcount


def prune_counts(conn: sqlite3.Connection) -> int:
    """Delete the per-minute counts (``event_counts``) of events retention removed.

    A minute goes once every event it counts is gone (its ``last_seq`` is below
    the oldest event left); the range on the primary key's first column keeps
    this a short walk, whatever the table's size. Returns how many rows.
    """
    oldest = conn.execute("SELECT seq, received_at FROM events ORDER BY seq LIMIT 1").fetchone()
    if oldest is None:
        return 0
    return conn.execute(
        "DELETE FROM event_counts WHERE minute <= ? AND last_seq < ?",
        (oldest[1][:16], oldest[0]),
    ).rowcount


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of ``journal.db`` pages in use (free pages excluded)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


class Retention:
    """The retention loop of one journal (see :func:`serve_retention`)."""

    def __init__(self, journal: Journal, sinks: Sequence[str], settings: RetentionSettings):
        self.journal = journal
        self.sinks = tuple(sinks)
        self.settings = settings
        self.stats = RetentionStatistics()
        self.wake = trio.Event()

    def follow(self, sinks: Iterable[str]) -> None:
        """The configured sinks changed (a reload): hold back for these from now on."""
        self.sinks = tuple(sinks)

    async def run_once(self, reader: sqlite3.Connection, now: datetime) -> int:
        """One pass: age, then the cap. Returns how many events it deleted."""
        s = self.settings
        cutoff = format_utc(now - timedelta(seconds=s.max_age))
        boundary = await trio.to_thread.run_sync(store.seq_before_time, reader, cutoff)
        deleted = await self._delete_through(boundary)
        if s.max_bytes:
            used = await trio.to_thread.run_sync(used_bytes, reader)
            if used > s.max_bytes and s.policy == "drop_confirmed":
                target = int(s.max_bytes * 0.95)  # some room, so it does not flap at the cap

                async def under() -> bool:
                    return await trio.to_thread.run_sync(used_bytes, reader) <= target

                deleted += await self._delete_through(2**62, under)
                used = await trio.to_thread.run_sync(used_bytes, reader)
            self.stats.used_bytes = used
            over = used > s.max_bytes
            if over != self.stats.refusing:
                if over:
                    log.error(
                        "journal uses %d bytes, over retention.max_bytes (%d): refusing intake "
                        "(503) until sinks confirm and retention frees space",
                        used,
                        s.max_bytes,
                    )
                else:
                    log.warning("journal back under retention.max_bytes: accepting again")
            self.stats.refusing = over
            self.journal.refuse_intake(
                "the journal is full (retention.max_bytes) until the sinks catch up"
                if over
                else None
            )
        if deleted:
            await self.journal.control(prune_counts)
        self.stats.runs += 1
        self.stats.deleted += deleted
        return deleted

    async def _delete_through(
        self, before: int, done: Callable[[], Awaitable[bool]] | None = None
    ) -> int:
        """Delete what may go up to ``before``, a chunk per transaction, until nothing is
        left or ``done()``."""
        total = 0
        while True:
            n = await self.journal.control(
                lambda conn: delete_chunk(conn, self.sinks, before, self.settings.chunk)
            )
            total += n
            if n < self.settings.chunk or (done is not None and await done()):
                return total
            await trio.lowlevel.checkpoint()  # let ingest's commits in between


async def serve_retention(
    retention: Retention, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run retention every ``interval`` seconds (and when woken) until cancelled."""
    reader = await trio.to_thread.run_sync(store.open_reader, retention.journal.path)
    task_status.started()
    try:
        while True:
            try:
                deleted = await retention.run_once(reader, datetime.now(UTC))
                if deleted:
                    log.info("retention: deleted %d events", deleted)
            except Exception as exc:  # a failed pass is retried at the next interval
                log.error("retention pass failed: %s", exc)
            with trio.move_on_after(retention.settings.interval):
                await retention.wake.wait()
            retention.wake = trio.Event()
    finally:
        reader.close()
