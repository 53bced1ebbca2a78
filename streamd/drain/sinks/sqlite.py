"""The ``sqlite`` sink: events as analysis-ready tables in another SQLite database.

One table per stream (``<prefix>activity``, ``<prefix>audit``, ...), keyed by
the event id, with the journal's extracted columns and the event's JSON in
``event``; readable by ``sqlite-utils`` and Datasette. Tables and the
configured indexes (default: ``occurred_at``) are created with sqlite-utils;
rows are upserted by event id (a re-delivered event overwrites its row).
Batches that arrive while a transaction is written share the next one (group
commit), committed with ``synchronous=FULL`` before any of their cursors move.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import trio

if TYPE_CHECKING:
    import sqlite_utils

from streamd.drain.sinks.base import CONFIRMED, DrainEvent, GroupWriter, Result, transient
from streamd.journal.schema import sqlite_uri

_COLUMNS = {
    "id": str,
    "seq": int,
    "type": str,
    "source": str,
    "munchkin_id": str,
    "activity_type_id": int,
    "lead_id": int,
    "occurred_at": str,
    "received_at": str,
    "event": str,
}
_UPDATE = (
    "seq = excluded.seq, type = excluded.type, source = excluded.source, "
    "munchkin_id = excluded.munchkin_id, activity_type_id = excluded.activity_type_id, "
    "lead_id = excluded.lead_id, occurred_at = excluded.occurred_at, "
    "received_at = excluded.received_at, event = excluded.event"
)
INDEXABLE = ("seq", "type", "source", "munchkin_id", "activity_type_id", "lead_id", "occurred_at",
             "received_at")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    path: str
    table_prefix: str = ""
    # Each index is another B-tree every upsert writes; random keys (lead_id) cost most
    # (see ARCHITECTURE.md, "sqlite sink").
    indexes: tuple[str, ...] = ("occurred_at",)
    # The journal file: rows are then copied by SQLite from the journal (attached
    # read-only) and never enter Python; without it, from the events handed over.
    journal: str | None = None


class SqliteSink:
    """Writes batches in a worker thread through one connection."""

    def __init__(self, settings: SqliteSettings) -> None:
        self.settings = settings
        self._db: sqlite_utils.Database | None = None
        self._tables: set[str] = set()
        self._limiter = trio.CapacityLimiter(1)  # one connection, one writer
        self._group = GroupWriter(self._commit_group)

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        return await self._group.deliver(events)

    async def _commit_group(self, events: Sequence[DrainEvent]) -> Result:
        try:
            await trio.to_thread.run_sync(self._write, events, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            self._close()
            return transient(f"{self.settings.path}: {exc}")
        return CONFIRMED

    def _open(self) -> sqlite_utils.Database:
        # Imported here: sqlite-utils loads numpy and pandas when they are installed,
        # tens of MiB a daemon without a sqlite sink should not carry.
        import sqlite_utils

        if self._db is None:
            directory = os.path.dirname(os.path.abspath(self.settings.path))
            os.makedirs(directory, exist_ok=True)
            # Used from whichever worker thread trio hands us (one at a time: the limiter).
            conn = sqlite3.connect(
                sqlite_uri(self.settings.path, mode="rwc"),
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA busy_timeout = 5000")  # readers (Datasette) may hold it
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # committed before the cursor moves
            # Checkpoint every 64 MiB of WAL, not every 4 MiB: each checkpoint runs in the
            # committing thread and fsyncs the database; 2,000-row upserts ran 46-53k
            # events/s with the default and 83k with this (ARCHITECTURE.md, "Drain").
            # The page cache stays small (8 MiB): a 32 MiB one added ~8% and the RSS.
            conn.execute("PRAGMA wal_autocheckpoint = 16384")
            conn.execute("PRAGMA cache_size = -8192")
            if self.settings.journal is not None:
                conn.execute(
                    "ATTACH DATABASE ? AS journal",
                    (sqlite_uri(self.settings.journal),),
                )
            self._db = sqlite_utils.Database(conn)
            self._tables = set()
        return self._db

    def _table(self, db: sqlite_utils.Database, stream: str) -> str:
        name = f"{self.settings.table_prefix}{stream}"
        if name not in self._tables:
            table = db.table(name)
            table.create(_COLUMNS, pk="id", not_null={"seq", "received_at", "event"},
                         if_not_exists=True)  # fmt: skip
            for column in self.settings.indexes:
                table.create_index([column], if_not_exists=True)
            self._tables.add(name)
        return name

    def _write(self, events: Sequence[DrainEvent]) -> None:
        """Upsert a group's events in one transaction. Events read as references (no
        ``raw``: the drain's normal path) are copied by SQLite from the attached journal,
        their columns never turned into Python objects; events that carry their JSON
        (dead letters, which may outlive the journal's copy) are bound from Python."""
        db = self._open()
        copied: dict[str, list[int]] = {}
        bound: dict[str, list[tuple[object, ...]]] = {}
        for e in events:
            table = self._table(db, e.stream)
            if self.settings.journal is not None and not e.raw:
                copied.setdefault(table, []).append(e.seq)
            else:
                bound.setdefault(table, []).append(
                    (
                        e.key,
                        e.seq,
                        e.type,
                        e.source,
                        e.munchkin_id,
                        e.activity_type_id,
                        e.lead_id,
                        e.occurred_at,
                        e.received_at,
                        e.raw,
                    )
                )
        conn = db.conn
        # DEFERRED, not IMMEDIATE: IMMEDIATE takes a write lock on every attached
        # database, the journal included, and would make ingest's commits wait.
        conn.execute("BEGIN")
        try:
            for name, rows in bound.items():
                # Upsert by event id: a redelivery (at least once) replaces, never duplicates.
                conn.executemany(
                    f"INSERT INTO [{name}] (id, seq, type, source, munchkin_id, "  # noqa: S608
                    "activity_type_id, lead_id, occurred_at, received_at, event) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    f"ON CONFLICT (id) DO UPDATE SET {_UPDATE}",
                    rows,
                )
            for name, wanted in copied.items():
                done = conn.execute(
                    f"INSERT INTO [{name}] (id, seq, type, source, munchkin_id, "  # noqa: S608
                    "activity_type_id, lead_id, occurred_at, received_at, event) "
                    "SELECT event_key, seq, type, source, munchkin_id, activity_type_id, "
                    "lead_id, occurred_at, received_at, raw FROM journal.events "
                    "WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq "
                    f"ON CONFLICT (id) DO UPDATE SET {_UPDATE}",
                    (orjson.dumps(wanted),),
                ).rowcount
                if done != len(wanted):
                    # The cursor has not passed them, so retention cannot have deleted
                    # them: never confirm what was not written.
                    raise sqlite3.DataError(
                        f"{len(wanted) - done} of {len(wanted)} events are not in the journal"
                    )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._close, limiter=self._limiter)
