"""What the operator reads: sinks and dead letters, straight from the journal file.

Read-only connections: these work whether or not a daemon runs (changes go
through :class:`streamd.ops.Operator`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from streamd.drain import store
from streamd.drain.engine import age_seconds
from streamd.errors import JournalError
from streamd.journal.schema import SCHEMA_VERSION
from streamd.ops.actions import OperationRefused


@contextlib.contextmanager
def _reading(path: str) -> Iterator[sqlite3.Connection]:
    if not os.path.exists(path):
        raise JournalError(f"{path}: no journal here (is --data-dir or --journal right?)")
    conn = store.open_reader(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise JournalError(f"{path}: not a streamd journal (schema version 0)")
        if version > SCHEMA_VERSION:
            raise JournalError(f"{path}: journal schema {version} is newer than this streamd")
        has_sinks = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sinks'"
        ).fetchone()[0]
        if not has_sinks:
            raise JournalError(f"{path}: no sinks yet (no streamd with sinks has run on it)")
        yield conn
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: cannot read the journal: {exc}") from exc
    finally:
        conn.close()


def list_sinks(path: str) -> list[dict[str, Any]]:
    """Every sink's saved state, cursor, lag (events, seconds), dead letters, last error."""
    now = datetime.now(UTC)
    with _reading(path) as conn:
        counts = store.dead_letter_counts(conn)
        out = []
        for row in store.load_sinks(conn).values():
            lag_events, oldest = store.lag(conn, row.cursor)
            out.append(
                {
                    "name": row.name,
                    "state": "auto-paused"
                    if row.state == "active" and row.paused_for_failures
                    else row.state,
                    "reason": row.reason,
                    "cursor": row.cursor,
                    "lag_events": lag_events,
                    "lag_seconds": age_seconds(oldest, now),
                    "confirmed": row.confirmed,
                    "dead_letters": counts.get(row.name, 0),
                    "last_error": row.last_error,
                    "updated_at": row.updated_at,
                }
            )
        return out


def _letter(d: store.DeadLetter, *, raw: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "sink": d.sink,
        "seq": d.seq,
        "event_id": d.event_key,
        "stream": d.stream,
        "type": d.type,
        "reason": d.reason,
        "attempts": d.attempts,
        "failed_at": d.failed_at,
        "retry": d.retry,
        "last_response": d.last_response,
    }
    if raw:
        out["event"] = d.raw
    return out


def list_dead_letters(
    path: str, sink: str | None, *, after_id: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    """Dead letters in id order (without the event JSON)."""
    with _reading(path) as conn:
        letters = store.dead_letters(conn, sink, after_id=after_id, limit=limit)
        return [_letter(d, raw=False) for d in letters]


def show_dead_letter(path: str, letter_id: int) -> dict[str, Any]:
    """One dead letter with the event's JSON; raises :class:`DrainError` when absent."""
    with _reading(path) as conn:
        found = store.dead_letters(conn, after_id=letter_id - 1, limit=1)
        if not found or found[0].id != letter_id:
            raise OperationRefused(f"no dead letter with id {letter_id}")
        return _letter(found[0], raw=True)
