"""The journal schema: ordered, named migrations and the connection set-up.

The dedup index lives in a separate file (``dedup.py``); this module owns
``journal.db``: deliveries, events, meta.

``PRAGMA user_version`` holds the number of applied migrations; the
``migrations`` table records each by name and time. Every migration runs in
the same transaction as its bookkeeping, so a crash never leaves half of one.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Literal
from urllib.parse import quote

from streamd.errors import JournalError

Synchronous = Literal["full", "normal"]

# Each entry: (name, statements). Append only; never edit a released migration.
MIGRATIONS: Sequence[tuple[str, Sequence[str]]] = (
    (
        "0001_initial",
        (
            """
            CREATE TABLE deliveries (
                id INTEGER PRIMARY KEY,
                received_at TEXT NOT NULL,
                source TEXT NOT NULL,
                shape TEXT NOT NULL,
                message_id TEXT,
                adobe_event_id TEXT,
                retry_count INTEGER,
                events INTEGER NOT NULL,
                accepted INTEGER NOT NULL,
                duplicates INTEGER NOT NULL
            )
            """,
            """
            CREATE TABLE events (
                seq INTEGER PRIMARY KEY,
                event_key TEXT NOT NULL,
                stream TEXT NOT NULL,
                type TEXT,
                munchkin_id TEXT,
                activity_type_id INTEGER,
                lead_id INTEGER,
                occurred_at TEXT,
                received_at TEXT NOT NULL,
                source TEXT NOT NULL,
                delivery INTEGER NOT NULL REFERENCES deliveries(id),
                raw TEXT NOT NULL
            )
            """,
            # Identifies this journal, so a dedup index built for another one is never trusted.
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "INSERT INTO meta VALUES ('journal_id', lower(hex(randomblob(16))))",
            # The one secondary index on events: every index costs ingest a B-tree write
            # per event (ARCHITECTURE.md, "Indexes on events", has the figures).
            "CREATE INDEX events_stream_type ON events(stream, type)",
            # Per-minute counts, written by the writer in the same transaction as the
            # events they count: time windows and totals without scanning events.
            """
            CREATE TABLE event_counts (
                minute TEXT NOT NULL,
                source TEXT NOT NULL,
                stream TEXT NOT NULL,
                type TEXT NOT NULL,
                munchkin_id TEXT NOT NULL,
                events INTEGER NOT NULL,
                first_seq INTEGER NOT NULL,
                last_seq INTEGER NOT NULL,
                min_occurred_at TEXT,
                max_occurred_at TEXT,
                PRIMARY KEY (minute, source, stream, type, munchkin_id)
            ) WITHOUT ROWID
            """,
        ),
    ),
    (
        # The drain's state: one row per sink, and the events a sink could not take.
        # Self-contained (touches no table of 0001) so it can be renumbered at merge.
        "0002_sinks",
        (
            """
            CREATE TABLE sinks (
                name TEXT PRIMARY KEY,
                cursor INTEGER NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('active', 'paused', 'disabled')),
                reason TEXT,
                last_error TEXT,
                paused_for_failures INTEGER NOT NULL DEFAULT 0,
                confirmed INTEGER NOT NULL DEFAULT 0,
                updated_at TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE dead_letters (
                id INTEGER PRIMARY KEY,
                sink TEXT NOT NULL,
                seq INTEGER NOT NULL,
                event_key TEXT NOT NULL,
                stream TEXT NOT NULL,
                type TEXT,
                reason TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                last_response TEXT,
                failed_at TEXT NOT NULL,
                retry INTEGER NOT NULL DEFAULT 0,
                raw TEXT NOT NULL,
                UNIQUE (sink, seq)
            )
            """,
            "CREATE INDEX dead_letters_retry ON dead_letters(sink, retry)",
        ),
    ),
    (
        # journal grep/export --lead and the pull endpoint's lead filter. Partial: audit
        # and notification events have no lead. Its cost on ingest is in ARCHITECTURE.md.
        "0003_inspect_indexes",
        ("CREATE INDEX events_lead ON events(lead_id) WHERE lead_id IS NOT NULL",),
    ),
    (
        # The Journaling API pull sources: where each one is, written by the writer in the
        # same transaction as the events a page brought (so a restart resumes exactly
        # there), and the gaps a 410 (position past Adobe's retention) forced.
        "0004_pull",
        (
            """
            CREATE TABLE pull_positions (
                source TEXT PRIMARY KEY,
                position TEXT,
                restart TEXT CHECK (restart IN ('oldest', 'latest')),
                pages INTEGER NOT NULL DEFAULT 0,
                events INTEGER NOT NULL DEFAULT 0,
                accepted INTEGER NOT NULL DEFAULT 0,
                updated_at TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE pull_gaps (
                id INTEGER PRIMARY KEY,
                source TEXT NOT NULL,
                lost_after TEXT,
                restarted_from TEXT NOT NULL,
                detected_at TEXT NOT NULL,
                detail TEXT
            )
            """,
        ),
    ),
    (
        # The lead index moves to the derived index file (journal.dedup.db, dedup.py):
        # in journal.db its random inserts went through the fsynced WAL at every commit
        # and cost a saturated ingest a third of its rate at 2M events.
        "0005_lead_index_derived",
        ("DROP INDEX IF EXISTS events_lead",),
    ),
    (
        # An operator's rewind delivers again what a receiver already took: batches up
        # to ``replay_to`` (the highest cursor before the rewind) carry ``replay_tag`` in
        # their delivery id, so a receiver that drops repeated ids keeps the replay.
        "0006_sink_replays",
        (
            "ALTER TABLE sinks ADD COLUMN replay_to INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE sinks ADD COLUMN replay_tag TEXT",
        ),
    ),
    (
        # The (stream, type) index moves to the derived index file as sorted runs, like
        # the lead index: in journal.db each commit rewrote a leaf page per type it held
        # through the fsynced WAL, 132 of the 228 pages of a 16-batch I/O commit.
        "0007_type_index_derived",
        ("DROP INDEX IF EXISTS events_stream_type",),
    ),
    (
        # The per-minute counts may lag the events by about a second (counts.py): the
        # writer tallies them in memory and writes the tally once a second, not at every
        # commit. Every event up to ``counts_seq`` is counted; up to now, all of them.
        "0008_counts_seq",
        (
            "INSERT OR REPLACE INTO meta VALUES "
            "('counts_seq', (SELECT coalesce(max(seq), 0) FROM events))",
        ),
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def sqlite_uri(path: str, *, mode: Literal["ro", "rw", "rwc"] = "ro") -> str:
    """The SQLite URI filename ``file:<absolute path>?mode=<mode>`` for ``path``.

    The path is percent-encoded: in a URI ``?`` and ``#`` would end it and ``%``
    starts an escape, so a data directory named ``a #1?%`` would otherwise open
    another file or none. Never raises.
    """
    # fsencode: a file name that is not UTF-8 (surrogate escapes) keeps its bytes.
    return f"file:{quote(os.fsencode(os.path.abspath(path)))}?mode={mode}"


def connect(
    path: str, *, synchronous: Synchronous, cache_mib: int, readonly: bool = False
) -> sqlite3.Connection:
    """Open the journal with the pragmas streamd relies on.

    Raises :class:`JournalError` when the file cannot be opened or is not a
    SQLite database.
    """
    try:
        if readonly:
            conn = sqlite3.connect(
                sqlite_uri(path), uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            # Refuse a file that is not ours before changing anything in it
            # (journal_mode=WAL is persistent).
            _precheck(conn, path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"{path}: cannot switch the journal to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            # Checkpoints are the daemon's job (PASSIVE regularly, TRUNCATE as the brake),
            # never a random committing request's.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA cache_size = {-1024 * cache_mib}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA foreign_keys = OFF")
        return conn
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc}") from exc


def _precheck(conn: sqlite3.Connection, path: str) -> None:
    """Raise :class:`JournalError` for a newer schema or a foreign database."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        conn.close()
        raise JournalError(
            f"{path}: journal schema version {version} is newer than this streamd "
            f"understands ({SCHEMA_VERSION}); upgrade streamd"
        )
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[
            0
        ]
        if tables:
            conn.close()
            raise JournalError(f"{path}: this SQLite file has tables but is not a streamd journal")


def journal_id(conn: sqlite3.Connection) -> str:
    """The random id written when the journal was created."""
    row = conn.execute("SELECT value FROM main.meta WHERE key = 'journal_id'").fetchone()
    return str(row[0])


def migrate(conn: sqlite3.Connection, path: str, now: str) -> int:
    """Apply the pending migrations in order; return the schema version.

    Raises :class:`JournalError` for a file that is not a journal, is corrupt,
    or was written by a newer streamd.
    """
    try:
        _precheck(conn, path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for index in range(version, SCHEMA_VERSION):
            name, statements = MIGRATIONS[index]
            conn.execute("BEGIN IMMEDIATE")
            try:
                if index == 0:
                    conn.execute(
                        "CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
                    )
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, now))
                conn.execute(f"PRAGMA user_version = {index + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return SCHEMA_VERSION
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: not a usable streamd journal: {exc}") from exc
