"""The per-minute counts (``event_counts``): written about once a second, never behind
for a reader.

The writer adds each committed group's counts to a tally in memory and writes the tally
into ``event_counts`` with the group that is current when ``counts_interval`` has passed
(or the tally has ``MAX_TALLY`` rows, or the writer stops, or it is idle), together with
the meta row ``counts_seq``: every event up to that seq is counted. Upserting a group's
counts at every commit (about 70 rows for 20-event I/O batches of dozens of types) was
the largest of the writer's statements per small delivery (ARCHITECTURE.md, "The
per-minute counts").

Whoever reads the counts adds the events past ``counts_seq`` from ``events`` (at most
about a second of them, found by the primary key): ``journal stats`` and ``stats`` give
the same answers as before. After a crash the tally is gone; the writer's next start
counts the events past ``counts_seq`` before it takes requests (:func:`catch_up`).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from streamd.errors import JournalError

# (minute, source, stream, type, munchkin) -> [events, first_seq, last_seq, min_occ, max_occ]
Tally = dict[tuple[str, str, str, str, str], list[Any]]

COUNTS_SEQ = "counts_seq"  # the meta key
MAX_TALLY = 10_000  # rows the tally may hold before it is written, whatever the time

_ON_CONFLICT = """
ON CONFLICT (minute, source, stream, type, munchkin_id) DO UPDATE SET
    events = events + excluded.events,
    first_seq = min(first_seq, excluded.first_seq),
    last_seq = max(last_seq, excluded.last_seq),
    min_occurred_at = coalesce(
        min(min_occurred_at, excluded.min_occurred_at), min_occurred_at, excluded.min_occurred_at
    ),
    max_occurred_at = coalesce(
        max(max_occurred_at, excluded.max_occurred_at), max_occurred_at, excluded.max_occurred_at
    )
"""
# The same rows computed from the journal (the key as the writer builds it).
_GROUPED = """
SELECT substr(received_at, 1, 16), source, stream, coalesce(type, ''),
    coalesce(munchkin_id, ''), count(*), min(seq), max(seq), min(occurred_at),
    max(occurred_at)
FROM events WHERE seq > ? GROUP BY 1, 2, 3, 4, 5
"""
_SET_SEQ = "UPDATE meta SET value = ? WHERE key = 'counts_seq'"
# Constant text only (no value is formatted into it): the writer's rows, or the same rows
# computed from the journal.
UPSERT = "INSERT INTO event_counts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + _ON_CONFLICT  # noqa: S608
_CATCH_UP = "INSERT INTO event_counts " + _GROUPED + _ON_CONFLICT


def add(into: dict[Any, list[Any]], key: Any, c: list[Any]) -> None:
    """Add one row of counts (events, first and last seq, min and max occurred) to
    ``into[key]``; ``c`` itself becomes that row when ``key`` is new."""
    g = into.get(key)
    if g is None:
        into[key] = c
        return
    g[0] += c[0]
    g[1] = min(g[1], c[1])
    g[2] = max(g[2], c[2])
    if c[3] is not None and (g[3] is None or c[3] < g[3]):
        g[3] = c[3]
    if c[4] is not None and (g[4] is None or c[4] > g[4]):
        g[4] = c[4]


def merge(into: Tally, other: Tally) -> None:
    """Add ``other``'s rows to ``into`` (``other``'s lists may become ``into``'s)."""
    for key, c in other.items():
        add(into, key, c)


def merged_rows(tally: Tally, group: Tally) -> list[tuple[Any, ...]]:
    """The rows of ``tally`` and ``group`` together; ``tally`` unchanged (its lists are
    copied), ``group``'s lists taken as they are."""
    both = {key: list(c) for key, c in tally.items()}
    merge(both, group)
    return [(*key, *c) for key, c in both.items()]


def write(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], counted: int) -> None:
    """Inside the caller's transaction: ``rows`` into ``event_counts``; ``counted`` (the
    highest seq they cover, every event before it included) into ``counts_seq``."""
    if rows:
        conn.executemany(UPSERT, rows)
    conn.execute(_SET_SEQ, (str(counted),))


def counted_seq(conn: sqlite3.Connection) -> int | None:
    """``counts_seq``: every event up to it is in ``event_counts``; None for a journal
    written before the counts could lag (schema 7 and older: always up to date)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'counts_seq'").fetchone()
    if row is None:
        return None
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise JournalError(
            f"the journal's meta row counts_seq is {str(row[0])[:40]!r}, not a seq "
            "(edited by hand?): the next start of streamd counts every event again"
        ) from None


def lagging_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """What ``event_counts`` does not hold yet, in its shape (minute, source, stream,
    type, munchkin, events, first_seq, last_seq, min and max occurred): the events past
    ``counts_seq``, at most about a second's worth, read by the primary key."""
    counted = counted_seq(conn)
    if counted is None:
        return []
    return conn.execute(_GROUPED, (counted,)).fetchall()


def catch_up(conn: sqlite3.Connection, last: int) -> int:
    """At the writer's start: count the events past ``counts_seq`` up to ``last`` (the
    newest seq: those whose tally a crash lost) in one transaction; return the new
    ``counts_seq``.

    A deferred transaction whose first statement writes: the writer's connection has the
    derived file attached, which ``BEGIN IMMEDIATE`` would lock as well.
    """
    wipe = False
    try:
        counted = counted_seq(conn)
    except JournalError:  # a damaged row: count every event again, from nothing
        counted, wipe = 0, True
    if counted is None:  # migration 0008 writes the row; a journal without it is complete
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('counts_seq', ?)", (str(last),))
        return last
    if last <= counted and not wipe:
        return counted
    conn.execute("BEGIN")
    try:
        if wipe:
            conn.execute("DELETE FROM event_counts")
        conn.execute(_CATCH_UP, (counted,))
        conn.execute(_SET_SEQ, (str(last),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return last
