"""Read-only queries for operators: what arrived, how much, how big."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from typing import Any

from streamd.errors import JournalError
from streamd.journal.counts import lagging_rows
from streamd.journal.schema import SCHEMA_VERSION, connect


def journal_stats(path: str) -> dict[str, Any]:
    """Summarise a journal: counts by stream and type, duplicates, time range, file sizes.

    Opens the file read-only; never writes. Raises :class:`JournalError` when
    the file is missing or is not a streamd journal.
    """
    if not os.path.exists(path):
        raise JournalError(f"{path}: no journal here (is --data-dir right?)")
    conn = connect(path, synchronous="full", cache_mib=8, readonly=True)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise JournalError(f"{path}: not a streamd journal (schema version 0)")
        if version > SCHEMA_VERSION:
            raise JournalError(f"{path}: journal schema {version} is newer than this streamd")
        # From the per-minute counts the writer keeps (no scan of events, however big),
        # plus the events not in them yet (about a second's worth: counts.py).
        lagging = lagging_rows(conn)
        by_type: Counter[tuple[str, str]] = Counter()
        for s, t, n in conn.execute(
            "SELECT stream, type, sum(events) FROM event_counts GROUP BY stream, type"
        ):
            by_type[(s, t)] += n
        for row in lagging:
            by_type[(row[2], row[3])] += row[5]
        streams: dict[str, int] = {}
        for (s, _), n in sorted(by_type.items()):
            streams[s] = streams.get(s, 0) + n
        types = [
            {"stream": s, "type": t or None, "events": n}
            for (s, t), n in sorted(by_type.items(), key=lambda item: (-item[1], *item[0]))
        ]
        deliveries, received, accepted, duplicates = conn.execute(
            "SELECT count(*), coalesce(sum(events), 0), coalesce(sum(accepted), 0), "
            "coalesce(sum(duplicates), 0) FROM deliveries"
        ).fetchone()
        first = conn.execute("SELECT seq, received_at FROM events ORDER BY seq LIMIT 1").fetchone()
        last = conn.execute(
            "SELECT seq, received_at FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        occurred = conn.execute(
            "SELECT min(min_occurred_at), max(max_occurred_at) FROM event_counts"
        ).fetchone()
        lows = [v for v in (occurred[0], *(row[8] for row in lagging)) if v is not None]
        highs = [v for v in (occurred[1], *(row[9] for row in lagging)) if v is not None]
        occurred = (min(lows, default=None), max(highs, default=None))
        sources = dict(
            conn.execute("SELECT source, count(*) FROM deliveries GROUP BY source ORDER BY source")
        )
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: cannot read the journal: {exc}") from exc
    finally:
        conn.close()
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        try:
            sizes[f"journal{suffix}"] = os.path.getsize(path + suffix)
        except OSError:
            sizes[f"journal{suffix}"] = 0
    return {
        "path": path,
        "schema_version": version,
        "events": sum(streams.values()),
        "by_stream": streams,
        "by_type": types,
        "deliveries": deliveries,
        "deliveries_by_source": sources,
        "events_received": received,
        "events_accepted": accepted,
        "duplicates": duplicates,
        "first": None if first is None else {"seq": first[0], "received_at": first[1]},
        "last": None if last is None else {"seq": last[0], "received_at": last[1]},
        "occurred_range": {"min": occurred[0], "max": occurred[1]},
        "file_bytes": sizes,
    }
