"""Operator commands on a journal file: read-only ones anytime, changes only when stopped.

Changes take the journal's writer lock (``journal.db.lock``), so they refuse
to touch a journal a running daemon holds; a running daemon is changed through
its :class:`streamd.drain.Drain` (the admin listener's job). Dead letters asked
to be retried here are delivered by the daemon when it next starts.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from streamd.core.timeparse import format_utc
from streamd.drain import store
from streamd.drain.engine import DrainError, age_seconds, replay_cursor
from streamd.errors import JournalError
from streamd.journal.schema import SCHEMA_VERSION


def utc_now() -> str:
    return format_utc(datetime.now(UTC))


@contextlib.contextmanager
def _reading(path: str) -> Iterator[sqlite3.Connection]:
    if not os.path.exists(path):
        raise JournalError(f"{path}: no journal here (is --data-dir right?)")
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


def parse_time(text: str) -> str:
    """An ISO 8601 time (a date alone is midnight UTC; no zone is UTC) in the journal's
    form; raises :class:`DrainError`."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DrainError(
            f"{text!r} is not a time (use ISO 8601, e.g. 2026-05-01T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return format_utc(when.astimezone(UTC))


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
            raise DrainError(f"no dead letter with id {letter_id}")
        return _letter(found[0], raw=True)


def _change(path: str, fn: Any) -> Any:
    with store.open_offline(path, utc_now()) as conn:
        try:
            with store.transaction(conn):
                return fn(conn)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: {exc}") from exc


def set_state(
    path: str, name: str, state: str, reason: str | None, *, resuming: bool = False
) -> store.SinkRow:
    """Pause, resume or enable (``active``), or disable a sink of a stopped daemon.

    With ``resuming``, a disabled sink is refused (it must be enabled), as
    :meth:`Drain.resume` does.
    """

    def change(conn: sqlite3.Connection) -> store.SinkRow:
        current = store.load_sinks(conn).get(name)
        if resuming and current is not None and current.state == "disabled":
            raise DrainError(f"sink {name!r} is disabled; enable it instead")
        return store.set_state(conn, name, state, reason, utc_now())

    row = _change(path, change)
    assert isinstance(row, store.SinkRow)
    return row


def replay(
    path: str, name: str, *, seq: int | None = None, received_at: str | None = None
) -> store.SinkRow:
    """Rewind a sink of a stopped daemon (see :meth:`Drain.replay`)."""

    def rewind(conn: sqlite3.Connection) -> store.SinkRow:
        if name not in store.load_sinks(conn):
            raise DrainError(f"no sink named {name!r} in the journal")
        return store.set_cursor(
            conn, name, replay_cursor(conn, seq=seq, received_at=received_at), utc_now()
        )

    row = _change(path, rewind)
    assert isinstance(row, store.SinkRow)
    return row


def replay_range(
    path: str,
    name: str,
    from_seq: int,
    to_seq: int,
    *,
    streams: Sequence[str] = (),
    types: Sequence[str] = (),
) -> int:
    """Queue a filtered set for re-delivery when the daemon next runs (see
    :func:`store.queue_replay`)."""
    return int(
        _change(
            path,
            lambda conn: store.queue_replay(
                conn, name, from_seq, to_seq, streams=streams, types=types
            ),
        )
    )


def retry_dead_letters(path: str, sink: str, ids: Sequence[int] | None) -> int:
    """Mark dead letters for delivery when the daemon next runs; return how many."""
    return int(_change(path, lambda conn: store.mark_retry(conn, sink, ids)))


def drop_dead_letters(path: str, sink: str, ids: Sequence[int] | None) -> int:
    """Delete dead letters; return how many."""
    return int(_change(path, lambda conn: store.drop_dead_letters(conn, sink, ids)))
