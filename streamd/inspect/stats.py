"""``streamd journal stats``: what arrived in a window, how fast, and how big the files are.

One pass over the window's rows (``GROUP BY stream, type, munchkin_id,
source``, folded in Python) gives every breakdown; with the default
``--clock received`` the window is a ``seq`` range found by bisection, so a
24-hour window costs a range scan of the primary key, not of the table.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import IO, Any

import orjson

from streamd.clock import utc_now_datetime
from streamd.core.timeparse import parse_timestamp
from streamd.errors import JournalError
from streamd.inspect.commands import filters_from, open_from, write_bytes
from streamd.inspect.filters import Filters
from streamd.inspect.output import colour_enabled, resolve_format, write_table
from streamd.inspect.reader import seq_window
from streamd.journal.counts import lagging_rows


def _seconds(a: str | None, b: str | None) -> float | None:
    start = parse_timestamp(a) if a else None
    end = parse_timestamp(b) if b else None
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def window_stats(
    conn: sqlite3.Connection, path: str, filters: Filters, now: datetime
) -> dict[str, Any]:
    """Counts by stream, type, Munchkin id and source in the window, rate, duplicates, sizes."""
    lo, hi = seq_window(conn, filters)
    condition, params = filters.where_sql()
    where = f"seq > ? AND seq <= ? AND {condition}"
    groups = _rollup_groups(conn, filters)
    if groups is None:
        # One scan of the window, counted in Python: SQLite's GROUP BY would sort a day's
        # rows (1.25M at 10M events) in a temporary B-tree on top of the scan.
        groups = _scan_groups(conn, where, [lo, hi, *params])
    streams: Counter[str] = Counter()
    types: Counter[tuple[str, str | None]] = Counter()
    munchkins: Counter[str | None] = Counter()
    sources: Counter[str] = Counter()
    for (stream, etype, munchkin, source), n in groups.items():
        streams[stream] += n
        types[(stream, etype)] += n
        munchkins[munchkin] += n
        sources[source] += n
    # The first and last matching events, by seq (no filter: two primary-key lookups).
    ends = [
        conn.execute(
            f"SELECT seq, received_at, occurred_at FROM events WHERE {where} "
            f"ORDER BY seq {direction} LIMIT 1",
            (lo, hi, *params),
        ).fetchone()
        for direction in ("ASC", "DESC")
    ]
    total = sum(streams.values())
    since = filters.since if filters.clock == "received" else None
    until = filters.until if filters.clock == "received" else None
    first, last = ends
    first_received = first[1] if first else None
    last_received = last[1] if last else None
    window_start = since or first_received
    window_end = until or (now.strftime("%Y-%m-%dT%H:%M:%S.000Z") if since else last_received)
    span = _seconds(window_start, window_end)
    deliveries = _deliveries(conn, filters)
    return {
        "path": path,
        "schema_version": conn.execute("PRAGMA user_version").fetchone()[0],
        "window": {
            "clock": filters.clock,
            "since": filters.since,
            "until": filters.until,
            "filtered": filters
            != Filters(since=filters.since, until=filters.until, clock=filters.clock),
        },
        "events": total,
        "by_stream": dict(sorted(streams.items())),
        "by_type": [
            {"stream": s, "type": t, "events": n}
            for (s, t), n in sorted(
                types.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or "")
            )
        ],
        "by_munchkin": {str(k): v for k, v in sorted(munchkins.items(), key=lambda kv: -kv[1])},
        "by_source": dict(sorted(sources.items())),
        "first": None
        if first is None
        else {"seq": first[0], "received_at": first[1], "occurred_at": first[2]},
        "last": None
        if last is None
        else {"seq": last[0], "received_at": last[1], "occurred_at": last[2]},
        "rate": {
            "seconds": span,
            "events_per_second": None if not span else round(total / span, 3),
        },
        **deliveries,
        "file_bytes": _sizes(path),
        "sinks": _sinks(conn, now),
        "pulls": _pulls(conn),
    }


_MAX_GAPS_SHOWN = 20


def _pulls(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Each pull source's saved position and counts, and its gaps (newest first)."""
    try:
        positions = conn.execute(
            "SELECT source, position, restart, pages, events, accepted, updated_at "
            "FROM pull_positions ORDER BY source"
        ).fetchall()
        gaps = conn.execute(
            "SELECT source, lost_after, restarted_from, detected_at FROM pull_gaps ORDER BY id DESC"
        ).fetchall()
    except sqlite3.OperationalError:
        return []  # a journal from before the pull source
    out = []
    for source, position, restart, pages, events, accepted, updated in positions:
        mine = [g for g in gaps if g[0] == source]
        out.append(
            {
                "name": source,
                "position": position,
                "restart_from": restart,
                "pages": pages,
                "events": events,
                "accepted": accepted,
                "updated_at": updated,
                "gaps": len(mine),
                "recent_gaps": [
                    {"lost_after": g[1], "restarted_from": g[2], "detected_at": g[3]}
                    for g in mine[:_MAX_GAPS_SHOWN]
                ],
            }
        )
    return out


def _sinks(conn: sqlite3.Connection, now: datetime) -> list[dict[str, Any]]:
    """Each sink's state, cursor and lag (events past its cursor, and the age of the
    oldest of them); empty for a journal without sinks."""
    try:
        rows = conn.execute("SELECT name, state, cursor FROM sinks ORDER BY name").fetchall()
    except sqlite3.OperationalError:
        return []  # a journal from before the drain
    newest = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    out = []
    for name, state, cursor in rows:
        oldest = conn.execute(
            "SELECT received_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (cursor,)
        ).fetchone()
        age = _seconds(oldest[0], now.strftime("%Y-%m-%dT%H:%M:%S.000Z")) if oldest else 0.0
        out.append(
            {
                "name": name,
                "state": state,
                "cursor": cursor,
                "lag_events": max(0, newest - cursor),
                "lag_seconds": age,
            }
        )
    return out


Group = tuple[str, str | None, str | None, str]  # stream, type, munchkin id, source


def _scan_groups(conn: sqlite3.Connection, where: str, params: list[object]) -> Counter[Group]:
    return Counter(
        conn.execute(f"SELECT stream, type, munchkin_id, source FROM events WHERE {where}", params)
    )


def _rollup_groups(conn: sqlite3.Connection, filters: Filters) -> Counter[Group] | None:
    """The window's counts from ``event_counts`` (kept by the writer per minute of
    ``received_at``), or None when it cannot answer: filters it has no column for, the
    occurred clock, or a journal written without it.

    Whole minutes come from the counts; the partial minutes at the window's edges are
    counted from their few events, so the answer is exact.
    """
    if filters.clock != "received" and (filters.since or filters.until):
        return None
    if filters.activity_type_ids or filters.lead_ids or filters.where:
        return None
    try:
        has_counts = conn.execute("SELECT 1 FROM event_counts LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return None  # a journal from before event_counts
    if has_counts is None:
        return None if conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() else Counter()
    since, until = filters.since, filters.until
    first_whole = _ceil_minute(since) if since else None  # YYYY-MM-DDTHH:MM
    end_whole = until[:16] if until else None  # exclusive
    if first_whole is not None and end_whole is not None and first_whole >= end_whole:
        return _scan_window(conn, filters, since, until)  # not one whole minute inside
    parts, params = ["1"], []
    if first_whole is not None:
        parts.append("minute >= ?")
        params.append(first_whole)
    if end_whole is not None:
        parts.append("minute < ?")
        params.append(end_whole)
    groups: Counter[Group] = Counter()
    for stream, etype, munchkin, source, n in conn.execute(
        "SELECT stream, type, munchkin_id, source, sum(events) FROM event_counts "
        f"WHERE {' AND '.join(parts)} GROUP BY stream, type, munchkin_id, source",
        params,
    ):
        key = (stream, etype or None, munchkin or None, source)
        if _matches(filters, key):
            groups[key] += n
    # The events the writer has not counted into event_counts yet (about a second's).
    for minute, source, stream, etype, munchkin, n, *_ in lagging_rows(conn):
        if (first_whole is not None and minute < first_whole) or (
            end_whole is not None and minute >= end_whole
        ):
            continue
        key = (stream, etype or None, munchkin or None, source)
        if _matches(filters, key):
            groups[key] += n
    if since is not None and first_whole is not None and since < first_whole + ":00.000Z":
        groups.update(_scan_window(conn, filters, since, first_whole + ":00.000Z"))
    if until is not None and end_whole is not None and until > end_whole + ":00.000Z":
        groups.update(_scan_window(conn, filters, end_whole + ":00.000Z", until))
    return groups


def _scan_window(
    conn: sqlite3.Connection, filters: Filters, since: str | None, until: str | None
) -> Counter[Group]:
    edge = replace(filters, since=since, until=until, clock="received")
    lo, hi = seq_window(conn, edge)
    condition, params = edge.where_sql()
    return _scan_groups(conn, f"seq > ? AND seq <= ? AND {condition}", [lo, hi, *params])


def _ceil_minute(text: str) -> str:
    """The first whole minute at or after ``text`` (journal time), as ``YYYY-MM-DDTHH:MM``."""
    if text[16:] in ("", ":00.000Z", ":00Z", ":00"):
        return text[:16]
    when = parse_timestamp(text)
    assert when is not None
    return (when.replace(second=0, microsecond=0) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")


def _matches(filters: Filters, key: Group) -> bool:
    stream, etype, munchkin, source = key
    if filters.streams and stream not in filters.streams:
        return False
    if filters.types and not any(fnmatchcase(etype or "", t) for t in filters.types):
        return False
    if filters.munchkin_ids and munchkin not in filters.munchkin_ids:
        return False
    return not (filters.sources and source not in filters.sources)


def _deliveries(conn: sqlite3.Connection, filters: Filters) -> dict[str, Any]:
    """Requests and duplicates in the window (by received_at; the source filter applies)."""
    parts, params = ["1"], []
    if filters.clock == "received" and filters.since is not None:
        parts.append("received_at >= ?")
        params.append(filters.since)
    if filters.clock == "received" and filters.until is not None:
        parts.append("received_at < ?")
        params.append(filters.until)
    if filters.sources:
        parts.append(f"source IN ({', '.join('?' * len(filters.sources))})")
        params.extend(filters.sources)
    count, received, accepted, duplicates = conn.execute(
        "SELECT count(*), coalesce(sum(events), 0), coalesce(sum(accepted), 0), "
        f"coalesce(sum(duplicates), 0) FROM deliveries WHERE {' AND '.join(parts)}",
        params,
    ).fetchone()
    by_source = dict(
        conn.execute(
            f"SELECT source, count(*) FROM deliveries WHERE {' AND '.join(parts)} "
            "GROUP BY source ORDER BY source",
            params,
        ).fetchall()
    )
    return {
        "deliveries": count,
        "deliveries_by_source": by_source,
        "events_received": received,
        "events_accepted": accepted,
        "duplicates": duplicates,
    }


def _sizes(path: str) -> dict[str, int]:
    sizes = {}
    base = path[: -len(".db")] if path.endswith(".db") else path
    for name, file in (
        ("journal", path),
        ("journal-wal", path + "-wal"),
        ("journal-shm", path + "-shm"),
        ("dedup", base + ".dedup.db"),
        ("dedup-wal", base + ".dedup.db-wal"),
    ):
        try:
            sizes[name] = os.path.getsize(file)
        except OSError:
            sizes[name] = 0
    return sizes


def cmd_stats(args: argparse.Namespace, out: IO[str]) -> int:
    """Print the window's statistics (a summary on a terminal, one JSON document otherwise)."""
    filters = filters_from(args)
    path, conn = open_from(args)
    with closing(conn):
        try:
            stats = window_stats(conn, path, filters, utc_now_datetime())
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: cannot read the journal: {exc}") from exc
    fmt = "json" if args.json else resolve_format(args.format, out)
    if fmt == "json":
        out.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif fmt == "jsonl":
        write_bytes(out, orjson.dumps(stats, option=orjson.OPT_APPEND_NEWLINE))
    else:
        _print_summary(out, stats, colour=colour_enabled(out))
    return 0


def _print_summary(out: IO[str], s: dict[str, Any], *, colour: bool) -> None:
    w = s["window"]
    window = "whole journal"
    if w["since"] or w["until"]:
        window = f"{w['clock']}_at in [{w['since'] or '…'}, {w['until'] or 'now'})"
    rate = s["rate"]["events_per_second"]
    rate_text = "-" if rate is None else f"{rate:,.1f}" if rate >= 10 else f"{rate:.3g}"
    span = s["rate"]["seconds"]
    span_text = "-" if span is None else f"{span:,.0f}"
    lines = [
        f"journal     {s['path']} (schema {s['schema_version']})",
        f"window      {window}" + ("  (filtered)" if w["filtered"] else ""),
        f"events      {s['events']}  " + "  ".join(f"{k}={v}" for k, v in s["by_stream"].items()),
        f"rate        {rate_text} events/s over {span_text} s",
        f"deliveries  {s['deliveries']}  "
        + "  ".join(f"{k}={v}" for k, v in s["deliveries_by_source"].items()),
        f"duplicates  {s['duplicates']} of {s['events_received']} events received",
    ]
    for end in ("first", "last"):
        e = s[end]
        if e:
            lines.append(
                f"{end:<11} seq {e['seq']}  received {e['received_at']}  "
                f"occurred {e['occurred_at']}"
            )
    lines.append("file bytes  " + "  ".join(f"{k}={v}" for k, v in s["file_bytes"].items()))
    for sink in s["sinks"]:
        lag = sink["lag_seconds"]
        lines.append(
            f"sink        {sink['name']} ({sink['state']}): cursor {sink['cursor']}, "
            f"lag {sink['lag_events']} events" + (f" ({lag:.0f} s)" if lag else "")
        )
    for pull in s["pulls"]:
        at = pull["position"] or f"none (next: from the {pull['restart_from']})"
        lines.append(
            f"pull        {pull['name']}: position {at}, {pull['events']} events in "
            f"{pull['pages']} pages ({pull['accepted']} new), last {pull['updated_at']}"
        )
        for gap in pull["recent_gaps"]:
            lines.append(
                f"  gap       after {gap['lost_after']}: past retention at "
                f"{gap['detected_at']}, restarted from the {gap['restarted_from']}"
            )
    out.write("\n".join(lines) + "\n")
    if s["by_source"]:
        out.write("\n")
        write_table(out, ["SOURCE", "EVENTS"], list(s["by_source"].items()), colour=colour)
    if s["by_munchkin"]:
        out.write("\n")
        write_table(out, ["MUNCHKIN", "EVENTS"], list(s["by_munchkin"].items()), colour=colour)
    if s["by_type"]:
        out.write("\n")
        rows = [(t["events"], t["stream"], t["type"]) for t in s["by_type"]]
        write_table(out, ["EVENTS", "STREAM", "TYPE"], rows, colour=colour)
