"""The read side of the journal: a read-only connection and filtered, paged selects.

Every inspection command and the pull endpoint read through here. The
connection is opened with ``mode=ro`` *and* ``PRAGMA query_only``, so it can
neither write nor create a file; it is safe while the daemon ingests (WAL
readers never block the writer).

Selects are paged by ``seq`` (keyset pagination, one short statement per
page) and bounded by the newest ``seq`` when the command started: the events
table is append-only, so the pages form a consistent view, and no read
transaction stays open long enough to hold back the daemon's checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import timedelta

from streamd.core.timeparse import format_utc, parse_timestamp
from streamd.errors import JournalError
from streamd.inspect.filters import Filters
from streamd.journal.paths import journal_in
from streamd.journal.schema import SCHEMA_VERSION, sqlite_uri

COLUMNS = (
    "seq",
    "event_key",
    "stream",
    "type",
    "munchkin_id",
    "activity_type_id",
    "lead_id",
    "occurred_at",
    "received_at",
    "source",
    "delivery",
    "raw",
)
_SELECT = ", ".join(COLUMNS)
Row = tuple[
    int, str, str, str | None, str | None, int | None, int | None, str | None, str, str, int, str
]
# received_at is stamped just before a batch is queued, and batches commit in queue
# order, so it grows with seq; the margin absorbs a clock stepped back by NTP.
RECEIVED_MARGIN = timedelta(seconds=60)


def open_readonly(path: str, *, cache_mib: int = 16) -> sqlite3.Connection:
    """Open the journal for reading only (``mode=ro`` + ``query_only``).

    Raises :class:`JournalError` when the file is missing, is not a streamd
    journal, or was written by a newer streamd.
    """
    if not os.path.exists(path):
        raise JournalError(f"{path}: no journal here (is --data-dir right?)")
    try:
        conn = sqlite3.connect(
            sqlite_uri(path),
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc}") from exc
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"PRAGMA cache_size = {-1024 * cache_mib}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise JournalError(f"{path}: not a streamd journal (schema version 0)")
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{path}: journal schema {version} is newer than this streamd understands "
                f"({SCHEMA_VERSION}); upgrade streamd"
            )
        conn.execute("SELECT seq FROM events LIMIT 0")
    except JournalError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise JournalError(f"{path}: not a readable streamd journal: {exc}") from exc
    _attach_lead_index(conn, path)
    return conn


def _attach_lead_index(conn: sqlite3.Connection, path: str) -> None:
    """Attach the derived index file read-only when it is this journal's and holds the
    lead index; otherwise lead filters just scan (slower, same answers)."""
    from streamd.journal.dedup import dedup_path

    index = dedup_path(path)
    if not os.path.exists(index):
        return
    try:
        conn.execute("ATTACH DATABASE ? AS dedup", (sqlite_uri(index),))
        mine = conn.execute(
            "SELECT 1 FROM dedup.dedup_state, dedup.lead_state, main.meta "
            "WHERE main.meta.key = 'journal_id' AND main.meta.value = dedup.dedup_state.journal_id"
        ).fetchone()
    except sqlite3.Error:
        mine = None
    if mine is None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("DETACH DATABASE dedup")


def _condition(conn: sqlite3.Connection, filters: Filters) -> tuple[str, list[object]]:
    """The filters' SQL condition, with the lead index's when it can serve a lead filter."""
    condition, params = filters.where_sql()
    extra, extra_params = lead_index_sql(conn, filters.lead_ids)
    return condition + extra, [*params, *extra_params]


def lead_index_sql(conn: sqlite3.Connection, lead_ids: tuple[int, ...]) -> tuple[str, list[object]]:
    """An extra condition that lets SQLite find a lead's events through the lead index:
    its entries up to the seq it covers, and every event past that (not indexed yet).
    Empty when there is no lead filter or no usable index (the plain filter scans)."""
    if not lead_ids:
        return "", []
    try:
        row = conn.execute("SELECT covered_seq FROM dedup.lead_state").fetchone()
    except sqlite3.Error:
        return "", []  # not attached
    if row is None:
        return "", []
    marks = ", ".join("?" * len(lead_ids))
    # One IN over a UNION ALL, not an OR: with the OR, SQLite kept its scan of the seq
    # range and tested every row; this way the candidates drive rowid lookups.
    return (
        " AND seq IN (SELECT seq FROM dedup.lead_index WHERE run IN "
        f"(SELECT run FROM dedup.lead_runs) AND lead_id IN ({marks}) "
        f"UNION ALL SELECT seq FROM main.events WHERE seq > ? AND lead_id IN ({marks}))",
        [*lead_ids, int(row[0]), *lead_ids],
    )


# A window of the seq range: ``lo < seq <= hi``, and an extra condition (with its
# parameters) that lets SQLite take the window's candidates from the type index.
Window = tuple[int, int, str, list[object]]


def type_windows(conn: sqlite3.Connection, filters: Filters, lo: int, hi: int) -> list[Window]:
    """``(lo, hi]`` cut into windows, in seq order, that hold every match of the filters.

    With a stream or type filter and the type index attached (the derived file's runs,
    dedup.py), only the runs holding one of the matching (stream, type) codes are
    windows, each with its run's entries as candidates; the events the index does not
    cover yet (past its ``covered_seq``) are one last window, scanned. Otherwise the
    whole range is one window. The caller's own filter still decides every row.
    """
    whole: list[Window] = [(lo, hi, "", [])]
    if lo >= hi or not (filters.streams or filters.types):
        return whole
    condition, params = filters.stream_type_sql()
    try:
        (covered,) = conn.execute("SELECT covered_seq FROM dedup.type_state").fetchone()
        codes = [
            row[0]
            for row in conn.execute(
                f"SELECT DISTINCT code FROM dedup.type_names WHERE {condition}",
                params,
            )
        ]
    except sqlite3.Error:
        return whole  # not attached, or an index file from before the type index
    covered = int(covered)
    windows: list[Window] = []
    if codes and lo < covered:
        marks = ", ".join("?" * len(codes))
        # Per run holding a matching code: whether one of its matching rows is not a JSON
        # array (a damaged derived file): that run is scanned, not read through them.
        runs = conn.execute(
            "SELECT r.run, r.first_seq, r.last_seq, max(CASE WHEN json_valid(i.seqs) "
            "THEN json_type(i.seqs) IS NOT 'array' ELSE 1 END) "
            "FROM dedup.type_runs AS r JOIN dedup.type_index AS i ON i.run = r.run "
            f"AND i.code IN ({marks}) WHERE r.last_seq > ? AND r.first_seq <= ? "
            "GROUP BY r.run ORDER BY r.run",
            (*codes, lo, min(hi, covered)),
        ).fetchall()
        extra = (
            " AND seq IN (SELECT j.value FROM dedup.type_index AS t, json_each(t.seqs) AS j "
            f"WHERE t.run = ? AND t.code IN ({marks}))"
        )
        for run, first, last, damaged in runs:
            a, b = max(lo, first - 1), min(hi, last)
            if a < b:
                windows.append((a, b, "", []) if damaged else (a, b, extra, [run, *codes]))
    if covered < hi:
        windows.append((max(lo, covered), hi, "", []))
    return windows


def _windows(conn: sqlite3.Connection, filters: Filters, lo: int, hi: int) -> list[Window]:
    """:func:`type_windows` with the filters' whole condition: ``(lo, hi, condition,
    params)`` for ``seq > ? AND seq <= ? AND <condition>``."""
    condition, params = _condition(conn, filters)
    return [
        (a, b, condition + extra, [*params, *extra_params])
        for a, b, extra, extra_params in type_windows(conn, filters, lo, hi)
    ]


def journal_path(data_dir: str | None, journal: str | None) -> str:
    """``--journal FILE`` or ``<--data-dir>/journal.db`` (default data dir as for serve)."""
    return journal or journal_in(data_dir)


def max_seq(conn: sqlite3.Connection) -> int:
    """The newest event's ``seq`` (0 for an empty journal)."""
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


def first_seq_received(conn: sqlite3.Connection, at: str, newest: int) -> int:
    """The smallest ``seq`` whose ``received_at >= at`` (``newest + 1`` if none): a bisection."""
    lo, hi = 1, newest + 1  # answer in [lo, hi]
    probe = "SELECT seq, received_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1"
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(probe, (mid,)).fetchone()
        if row is None or row[0] > newest or row[1] >= at:
            hi = mid
        else:
            lo = row[0] + 1
    return lo


def _shift(text: str, delta: timedelta) -> str:
    parsed = parse_timestamp(text)
    assert parsed is not None  # produced by parse_filters
    try:
        return format_utc(parsed + delta)
    except OverflowError:
        return text


def seq_window(conn: sqlite3.Connection, filters: Filters) -> tuple[int, int]:
    """``(after, upto)``: the ``seq`` range that can hold matches, ``after < seq <= upto``.

    With ``clock='received'`` the window is narrowed by bisection (received_at
    grows with seq), so a time window costs a range scan of the primary key.
    """
    newest = max_seq(conn)
    after, upto = 0, newest
    windowed = filters.since is not None or filters.until is not None
    if (
        filters.clock == "occurred"
        and windowed
        and not filters.lead_ids
        and _has_index(conn, "events_occurred")
    ):
        # Without this, SQLite prefers the seq range of the paged select to the
        # occurred_at index and reads the whole table. The index's entries hold the
        # rowid: the window's first and last seq come from a scan of the index alone
        # (events arrive near the time they occurred, so the seq range is tight).
        parts, params = [], []
        if filters.since is not None:
            parts.append("occurred_at >= ?")
            params.append(filters.since)
        if filters.until is not None:
            parts.append("occurred_at < ?")
            params.append(filters.until)
        first, last = conn.execute(
            f"SELECT min(seq), max(seq) FROM events WHERE {' AND '.join(parts)}", params
        ).fetchone()
        if first is None:
            return 0, 0
        return first - 1, last
    if filters.clock == "received":
        if filters.since is not None:
            after = first_seq_received(conn, _shift(filters.since, -RECEIVED_MARGIN), newest) - 1
        if filters.until is not None:
            upto = first_seq_received(conn, _shift(filters.until, RECEIVED_MARGIN), newest) - 1
    return after, upto


def _has_index(conn: sqlite3.Connection, name: str) -> bool:
    # Without the index, min/max(seq) over an occurred window would scan the table:
    # then the paged select's own scan is the cheaper plan.
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def iter_events(
    conn: sqlite3.Connection,
    filters: Filters,
    *,
    after: int = 0,
    upto: int | None = None,
    limit: int | None = None,
    page: int = 2000,
) -> Iterator[Row]:
    """Matching events in ``seq`` order, ``after < seq <= upto`` (default: the newest now)."""
    for rows in iter_pages(conn, filters, after=after, upto=upto, limit=limit, page=page):
        yield from rows


def iter_pages(
    conn: sqlite3.Connection,
    filters: Filters,
    *,
    after: int = 0,
    upto: int | None = None,
    limit: int | None = None,
    page: int = 2000,
) -> Iterator[list[Row]]:
    """:func:`iter_events` a page (one short statement) at a time."""
    lo, hi = seq_window(conn, filters)
    lo = max(lo, after)
    if upto is not None:
        hi = min(hi, upto)
    yield from pages_between(conn, filters, lo, hi, limit, page)


def pages_between(
    conn: sqlite3.Connection, filters: Filters, lo: int, hi: int, limit: int | None, page: int
) -> Iterator[list[Row]]:
    """The events matching ``filters`` with ``lo < seq <= hi``, in seq order, ``page`` at
    a time (one short statement each), at most ``limit`` in all (None: no limit)."""
    remaining = limit
    for start, end, condition, params in _windows(conn, filters, lo, hi):
        sql = (
            f"SELECT {_SELECT} FROM events WHERE seq > ? AND seq <= ? AND {condition} "
            "ORDER BY seq LIMIT ?"
        )
        while start < end:
            n = page if remaining is None else min(page, remaining)
            if n <= 0:
                return
            rows: list[Row] = conn.execute(sql, (start, end, *params, n)).fetchall()
            if rows:
                yield rows
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < n:
                break  # this window is done
            start = rows[-1][0]


def last_events(
    conn: sqlite3.Connection, filters: Filters, count: int, upto: int | None = None
) -> list[Row]:
    """The newest ``count`` matching events with ``seq <= upto``, oldest first."""
    lo, hi = seq_window(conn, filters)
    if upto is not None:
        hi = min(hi, upto)
    newest_first: list[Row] = []
    for a, b, condition, params in reversed(_windows(conn, filters, lo, hi)):
        if len(newest_first) >= count:
            break
        newest_first += conn.execute(
            f"SELECT {_SELECT} FROM events WHERE seq > ? AND seq <= ? AND {condition} "
            "ORDER BY seq DESC LIMIT ?",
            (a, b, *params, count - len(newest_first)),
        ).fetchall()
    newest_first.reverse()
    return newest_first


def count_events(conn: sqlite3.Connection, filters: Filters) -> int:
    """How many events match."""
    lo, hi = seq_window(conn, filters)
    return sum(
        int(
            conn.execute(
                f"SELECT count(*) FROM events WHERE seq > ? AND seq <= ? AND {condition}",
                (a, b, *params),
            ).fetchone()[0]
        )
        for a, b, condition, params in _windows(conn, filters, lo, hi)
    )


def get_event(conn: sqlite3.Connection, ident: str, dedup_path: str | None = None) -> Row | None:
    """One event by ``seq`` (digits) or by its dedup key (anything else, or ``key:...``).

    A key is looked up in the dedup index (``journal.dedup.db``, by its 64-bit
    hash) when there is one, and confirmed against ``events.event_key``; else,
    or when the index does not know it yet, by a scan.
    """
    if ident.startswith("key:"):
        ident, by_seq = ident[4:], False
    else:
        by_seq = ident.isascii() and ident.isdigit() and len(ident) <= 19
    if by_seq:
        row = conn.execute(f"SELECT {_SELECT} FROM events WHERE seq = ?", (int(ident),)).fetchone()
        if row is not None:
            return row  # type: ignore[no-any-return]
    for seq in _dedup_candidates(ident, dedup_path):
        row = conn.execute(
            f"SELECT {_SELECT} FROM events WHERE seq = ? AND event_key = ?", (seq, ident)
        ).fetchone()
        if row is not None:
            return row  # type: ignore[no-any-return]
    # event_key has no index in journal.db (the dedup index is the other file): a scan.
    found = conn.execute(
        f"SELECT {_SELECT} FROM events WHERE event_key = ? ORDER BY seq DESC LIMIT 1", (ident,)
    ).fetchone()
    return found  # type: ignore[no-any-return]


def _dedup_candidates(key: str, dedup_path: str | None) -> list[int]:
    if dedup_path is None or not os.path.exists(dedup_path):
        return []
    from streamd.core.normalise import key_hash

    try:
        dedup = sqlite3.connect(sqlite_uri(dedup_path), uri=True)
        try:
            dedup.execute("PRAGMA query_only = ON")
            seqs = [
                r[0]
                for r in dedup.execute("SELECT seq FROM dedup WHERE key_hash = ?", (key_hash(key),))
            ]
            seqs += [
                r[0]
                for r in dedup.execute("SELECT seq FROM dedup_overflow WHERE event_key = ?", (key,))
            ]
            return seqs
        finally:
            dedup.close()
    except sqlite3.Error:
        return []  # derived data; the scan below still answers
