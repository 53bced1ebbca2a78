"""The drain's state in the journal: cursors, sink states, dead letters.

Every write here is a function of a connection that the engine hands to the
journal writer (:meth:`Journal.control`): it runs in the writer's thread
inside a group transaction, so the drain never competes with ingest for
SQLite's single write lock. Reads use the drain's own read-only connections.
The operator commands of a stopped daemon run the same functions against the
file, holding the writer lock (:func:`open_offline`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from streamd.drain.sinks.base import DrainEvent
from streamd.errors import JournalError, JournalHeld
from streamd.journal.schema import SCHEMA_VERSION, connect, migrate
from streamd.journal.writer import hold_writer_lock

STATES = ("active", "paused", "disabled")


@dataclass(frozen=True, slots=True)
class SinkRow:
    """A sink's persisted state."""

    name: str
    cursor: int
    state: str
    reason: str | None
    last_error: str | None
    confirmed: int
    updated_at: str
    paused_for_failures: bool = False
    replay_to: int = 0  # batches up to here are an operator's replay ...
    replay_tag: str | None = None  # ... and carry this in their delivery id


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a sink could not take, with why and how often it was tried."""

    id: int
    sink: str
    seq: int
    event_key: str
    stream: str
    type: str | None
    reason: str
    attempts: int
    last_response: str | None
    failed_at: str
    retry: bool
    raw: str


@dataclass(frozen=True, slots=True)
class NewDeadLetter:
    event: DrainEvent
    reason: str
    attempts: int
    last_response: str | None
    retry: bool = False  # deliver it again when the sink is up (a suspect of an outage)


@dataclass(frozen=True, slots=True)
class Progress:
    """A sink's progress to persist: its low-water mark and what it confirmed since."""

    cursor: int
    confirmed: int
    last_error: str | None
    paused_for_failures: bool = False


# -- writes (run by the journal writer, or offline under the writer lock) ------------


def ensure_sinks(conn: sqlite3.Connection, starts: dict[str, str], now: str) -> dict[str, SinkRow]:
    """Create the rows of configured sinks that have none; return every sink's row.

    ``starts`` maps a sink to ``"oldest"`` (deliver the whole journal) or
    ``"latest"`` (only what arrives from now on).
    """
    last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    for name, start in starts.items():
        conn.execute(
            "INSERT OR IGNORE INTO sinks (name, cursor, state, updated_at) VALUES (?, ?, ?, ?)",
            (name, 0 if start == "oldest" else last, "active", now),
        )
    return load_sinks(conn)


def save_progress(
    conn: sqlite3.Connection,
    progress: dict[str, Progress],
    dead: Sequence[tuple[str, NewDeadLetter]],
    now: str,
) -> None:
    """Record dead letters, then move cursors: both in one transaction, so a cursor is
    never past an event that is neither confirmed nor in the dead letters."""
    # Copied from the event's row: the cursor has not passed it, so retention has not
    # deleted it, and the reader need not have kept the event's JSON in memory.
    conn.executemany(
        "INSERT INTO dead_letters (sink, seq, event_key, stream, type, reason, attempts, "
        "last_response, failed_at, retry, raw) "
        "SELECT ?, seq, event_key, stream, type, ?, ?, ?, ?, ?, raw "
        "FROM events WHERE seq = ? "
        "ON CONFLICT (sink, seq) DO UPDATE SET reason = excluded.reason, "
        "attempts = dead_letters.attempts + excluded.attempts, "
        "last_response = excluded.last_response, failed_at = excluded.failed_at, "
        # An operator's retry asked meanwhile (a range replay over it) still stands.
        "retry = max(dead_letters.retry, excluded.retry)",
        [
            (sink, d.reason, d.attempts, d.last_response, now, int(d.retry), d.event.seq)
            for sink, d in dead
        ],
    )
    for name, p in progress.items():
        # Plain assignment: the writer runs controls in submission order, and a replay
        # retires the sink's runner (and flushes it) before it moves the cursor.
        conn.execute(
            "UPDATE sinks SET cursor = ?, confirmed = confirmed + ?, "
            "last_error = ?, paused_for_failures = ?, updated_at = ? WHERE name = ?",
            (p.cursor, p.confirmed, p.last_error, int(p.paused_for_failures), now, name),
        )


def set_state(
    conn: sqlite3.Connection, name: str, state: str, reason: str | None, now: str
) -> SinkRow:
    """Set a sink's operator state; raises :class:`JournalError` for an unknown sink."""
    assert state in STATES
    changed = conn.execute(
        "UPDATE sinks SET state = ?, reason = ?, updated_at = ? WHERE name = ?",
        (state, reason, now, name),
    ).rowcount
    if not changed:
        raise JournalError(f"no sink named {name!r} in the journal")
    return _sink(conn, name)


def set_cursor(conn: sqlite3.Connection, name: str, cursor: int, now: str) -> SinkRow:
    """Move a sink's cursor (replay: backwards); raises :class:`JournalError` for an
    unknown sink.

    Moving it back marks what lies between as a replay: those batches get a new
    delivery id (``replay_tag``), so a receiver that drops repeated ids keeps them.
    """
    tag = secrets.token_hex(4)
    changed = conn.execute(
        "UPDATE sinks SET replay_to = max(replay_to, cursor), "
        "replay_tag = CASE WHEN ? < cursor THEN ? ELSE replay_tag END, "
        "cursor = ?, updated_at = ? WHERE name = ?",
        (cursor, tag, cursor, now, name),
    ).rowcount
    if not changed:
        raise JournalError(f"no sink named {name!r} in the journal")
    return _sink(conn, name)


def replayed_up_to(conn: sqlite3.Connection, name: str, sent: int) -> None:
    """After a rewind of a running sink: batches up to ``sent`` went out (confirmed or
    not), so they are a replay too, under a tag of this rewind."""
    conn.execute(
        "UPDATE sinks SET replay_to = max(replay_to, ?), replay_tag = ? "
        "WHERE name = ? AND cursor < ?",
        (sent, secrets.token_hex(4), name, sent),
    )


def mark_retry_seqs(conn: sqlite3.Connection, sink: str, seqs: Sequence[int]) -> int:
    """Ask for ``sink``'s dead letters of the events ``seqs`` to be delivered again."""
    return sum(
        conn.execute(
            "UPDATE dead_letters SET retry = 1 WHERE sink = ? AND seq = ?", (sink, seq)
        ).rowcount
        for seq in seqs
    )


def mark_retry(conn: sqlite3.Connection, sink: str, ids: Sequence[int] | None) -> int:
    """Ask for the dead letters ``ids`` (None: all of ``sink``'s) to be delivered again."""
    if ids is None:
        return conn.execute("UPDATE dead_letters SET retry = 1 WHERE sink = ?", (sink,)).rowcount
    return sum(
        conn.execute(
            "UPDATE dead_letters SET retry = 1 WHERE sink = ? AND id = ?", (sink, i)
        ).rowcount
        for i in ids
    )


MAX_REPLAY_EVENTS = 100_000


def queue_replay(
    conn: sqlite3.Connection,
    sink: str,
    from_seq: int,
    to_seq: int,
    *,
    streams: Sequence[str] = (),
    types: Sequence[str] = (),
) -> int:
    """Queue the events ``from_seq..to_seq`` (those of ``streams``, with a type matching
    one of the GLOB patterns ``types``) for re-delivery to ``sink``: they join its dead
    letters marked for retry (reason "replay requested"), which the running sink
    delivers. Returns how many; raises :class:`JournalError` for an unknown sink or
    more than :data:`MAX_REPLAY_EVENTS` events."""
    if sink not in load_sinks(conn):
        raise JournalError(f"no sink named {sink!r} in the journal")
    where = ["seq BETWEEN ? AND ?"]
    args: list[object] = [from_seq, to_seq]
    if streams:
        where.append(f"stream IN ({','.join('?' * len(streams))})")
        args += streams
    if types:
        where.append("(" + " OR ".join("type GLOB ?" for _ in types) + ")")
        args += types
    condition = " AND ".join(where)  # fixed fragments; every value is a parameter
    count = conn.execute(
        f"SELECT count(*) FROM events WHERE {condition}",  # noqa: S608
        args,
    ).fetchone()[0]
    if count > MAX_REPLAY_EVENTS:
        raise JournalError(
            f"{count} events match; replay at most {MAX_REPLAY_EVENTS} at once "
            "(narrow the range, or rewind the sink with --from-seq alone)"
        )
    now = conn.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')").fetchone()[0]
    conn.execute(
        "INSERT INTO dead_letters (sink, seq, event_key, stream, type, reason, attempts, "  # noqa: S608
        "last_response, failed_at, retry, raw) "
        "SELECT ?, seq, event_key, stream, type, 'replay requested', 0, NULL, ?, 1, raw "
        f"FROM events WHERE {condition} "
        "ON CONFLICT (sink, seq) DO UPDATE SET retry = 1",
        [sink, now, *args],
    )
    return int(count)


def drop_dead_letters(conn: sqlite3.Connection, sink: str, ids: Sequence[int] | None) -> int:
    """Delete dead letters (None: all of ``sink``'s); return how many."""
    if ids is None:
        return conn.execute("DELETE FROM dead_letters WHERE sink = ?", (sink,)).rowcount
    return sum(
        conn.execute("DELETE FROM dead_letters WHERE sink = ? AND id = ?", (sink, i)).rowcount
        for i in ids
    )


def retried(
    conn: sqlite3.Connection,
    delivered: Sequence[int],
    failed: Sequence[tuple[int, str, str | None]],
) -> None:
    """Record the outcome of re-delivered dead letters: delivered ones are removed,
    failed ones stay (retry flag cleared, one more attempt, the new reason)."""
    conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in delivered])
    conn.executemany(
        "UPDATE dead_letters SET retry = 0, attempts = attempts + 1, reason = ?, "
        "last_response = ? WHERE id = ?",
        [(reason, response, i) for i, reason, response in failed],
    )


# -- reads -------------------------------------------------------------------------

# The envelope (sinks/base.py) is built by SQLite, in the reading thread: the Python
# sqlite3 module releases the GIL while a statement steps, so this work runs beside
# ingest instead of competing with it for the interpreter (ARCHITECTURE.md, "Drain").
# Plain concatenation: the event's JSON is spliced in as stored, never re-encoded;
# its line breaks (insignificant whitespace in JSON text) become spaces.
_ENVELOPE = (
    """'{"id":' || json_quote(event_key) || ',"seq":' || seq"""
    """ || ',"stream":' || json_quote(stream) || ',"type":' || json_quote(type)"""
    """ || ',"source":' || json_quote(source) || ',"munchkin_id":' || json_quote(munchkin_id)"""
    """ || ',"activity_type_id":' || coalesce(activity_type_id, 'null')"""
    """ || ',"lead_id":' || coalesce(lead_id, 'null')"""
    """ || ',"occurred_at":' || json_quote(occurred_at)"""
    """ || ',"received_at":' || json_quote(received_at)"""
    """ || ',"event":' || replace(replace(raw, char(13), ' '), char(10), ' ') || '}'"""
)
_EVENT_COLUMNS = (
    "seq, event_key, stream, type, munchkin_id, activity_type_id, source, occurred_at, "
    "received_at, raw, lead_id"
)
# As a BLOB: the UTF-8 bytes go to the sink as they are, never decoded into a str
# and encoded back (two copies of every event per sink, under the GIL).
_ROUTING_COLUMNS = (
    f"seq, stream, type, munchkin_id, activity_type_id, source, CAST({_ENVELOPE} AS BLOB)"
)
_REFERENCE_COLUMNS = "seq, stream, type, munchkin_id, activity_type_id, source, X''"


def read_events(
    conn: sqlite3.Connection, after: int, limit: int, *, full: bool = True, envelope: bool = True
) -> list[DrainEvent]:
    """Up to ``limit`` events with ``seq > after``, in order.

    ``full`` reads every column (for sinks that store them apart: postgres, or that
    key and label messages with them: kafka, nats), and with ``envelope`` the envelope
    too, built by SQLite;
    ``full`` False reads only what routing needs and the envelope, built by SQLite
    (no ``raw``, no key): half the bytes to turn into Python strings. ``envelope``
    False (with ``full`` False) reads only what routing needs: references, for a sink
    that copies the rows from the journal itself (sqlite with the journal attached).
    """
    if full:
        columns = f"{_EVENT_COLUMNS}, CAST({_ENVELOPE} AS BLOB)" if envelope else _EVENT_COLUMNS
        return [
            DrainEvent(*row)
            for row in conn.execute(
                f"SELECT {columns} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
                (after, limit),
            )
        ]
    columns = _ROUTING_COLUMNS if envelope else _REFERENCE_COLUMNS
    return [
        DrainEvent(seq, "", stream, type_, munchkin, activity, source, None, "", "", None, line)
        for seq, stream, type_, munchkin, activity, source, line in conn.execute(
            f"SELECT {columns} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (after, limit),
        )
    ]


def load_sinks(conn: sqlite3.Connection) -> dict[str, SinkRow]:
    """Every sink row, by name."""
    return {
        name: SinkRow(name, cursor, state, reason, error, confirmed, updated, bool(paused), to, tag)
        for name, cursor, state, reason, error, confirmed, updated, paused, to, tag in conn.execute(
            "SELECT name, cursor, state, reason, last_error, confirmed, updated_at, "
            "paused_for_failures, replay_to, replay_tag FROM sinks ORDER BY name"
        )
    }


def _sink(conn: sqlite3.Connection, name: str) -> SinkRow:
    return load_sinks(conn)[name]


def dead_letters(
    conn: sqlite3.Connection,
    sink: str | None = None,
    *,
    retry_only: bool = False,
    after_id: int = 0,
    limit: int = 100,
) -> list[DeadLetter]:
    """Dead letters in id order, optionally of one sink or only those asked to retry."""
    where = ["id > ?"]
    args: list[object] = [after_id]
    if sink is not None:
        where.append("sink = ?")
        args.append(sink)
    if retry_only:
        where.append("retry = 1")
    args.append(limit)
    return [
        DeadLetter(a, b, c, d, e, f, g, h, i, j, bool(k), m)
        for a, b, c, d, e, f, g, h, i, j, k, m in conn.execute(
            # Only fixed fragments are joined; every value is a parameter.
            "SELECT id, sink, seq, event_key, stream, type, reason, attempts, last_response, "  # noqa: S608
            f"failed_at, retry, raw FROM dead_letters WHERE {' AND '.join(where)} "
            "ORDER BY id LIMIT ?",
            args,
        )
    ]


def letters_to_retry(
    conn: sqlite3.Connection, sink: str, limit: int
) -> list[tuple[DeadLetter, DrainEvent]]:
    """Dead letters of ``sink`` asked to be retried, each with the event to deliver: the
    journal's columns while the event is still there, else what the dead letter kept
    (``received_at`` then is when it failed). The JSON is always the dead letter's copy."""
    letters = dead_letters(conn, sink, retry_only=True, limit=limit)
    out = []
    for d in letters:
        row = conn.execute(
            "SELECT munchkin_id, activity_type_id, source, occurred_at, received_at, lead_id "
            "FROM events WHERE seq = ? AND event_key = ?",
            (d.seq, d.event_key),
        ).fetchone()
        munchkin, activity, source, occurred, received, lead = row or (
            None, None, "", None, d.failed_at, None,
        )  # fmt: skip
        out.append(
            (
                d,
                DrainEvent(
                    d.seq,
                    d.event_key,
                    d.stream,
                    d.type,
                    munchkin,
                    activity,
                    source,
                    occurred,
                    received,
                    d.raw,
                    lead,
                ),
            )
        )
    return out


def dead_letter_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many dead letters each sink has."""
    return dict(conn.execute("SELECT sink, count(*) FROM dead_letters GROUP BY sink"))


def last_seq(conn: sqlite3.Connection) -> int:
    """The highest journaled sequence (0 for an empty journal)."""
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


def seq_before_time(conn: sqlite3.Connection, received_at: str) -> int:
    """The sequence just before the first event received at or after ``received_at``.

    ``received_at`` follows ``seq`` up to concurrent requests, so a binary search
    over the primary key finds it without an index on time.
    """
    lo, hi = 0, last_seq(conn)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        row = conn.execute(
            "SELECT received_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)
        ).fetchone()
        if row is None or row[0] >= received_at:
            hi = mid - 1
        else:
            lo = mid
    return lo


def lag(conn: sqlite3.Connection, cursor: int) -> tuple[int, str | None]:
    """Events past ``cursor`` and the receive time of the oldest of them.

    Sequences past any cursor have no gaps (retention deletes only below every
    cursor), so the count is a subtraction, not a scan of the backlog.
    """
    count = max(0, last_seq(conn) - cursor)
    oldest = conn.execute(
        "SELECT received_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (cursor,)
    ).fetchone()
    return int(count), None if oldest is None else str(oldest[0])


def open_reader(path: str, cache_mib: int = 8) -> sqlite3.Connection:
    """A read-only connection for the drain (raises :class:`JournalError`)."""
    return connect(path, synchronous="full", cache_mib=cache_mib, readonly=True)


@contextlib.contextmanager
def open_offline(path: str, now: str) -> Iterator[sqlite3.Connection]:
    """Write to the journal of a stopped daemon: take the writer lock (refusing when a
    daemon holds it), migrate, and yield a connection; each ``with conn_transaction``
    is the caller's. Raises :class:`JournalError`."""
    if not os.path.exists(path):
        raise JournalError(f"{path}: no journal here (is --data-dir right?)")
    try:
        fd = hold_writer_lock(path)
    except JournalError:
        raise JournalHeld(
            f"{path}: streamd is running on this journal; stop it first, or change it "
            "through the running daemon's admin listener"
        ) from None
    try:
        # Look before opening for writing: a write connection switches the file to WAL,
        # which would change a file that is not a journal at all.
        probe = connect(path, synchronous="full", cache_mib=1, readonly=True)
        try:
            version = probe.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: not a usable streamd journal: {exc}") from exc
        finally:
            probe.close()
        if version == 0:
            raise JournalError(f"{path}: not a streamd journal (schema version 0)")
        conn = connect(path, synchronous="full", cache_mib=8)
        try:
            if version < SCHEMA_VERSION:
                migrate(conn, path, now)
            yield conn
        finally:
            conn.close()
    finally:
        os.close(fd)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
