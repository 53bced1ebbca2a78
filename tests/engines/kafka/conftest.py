"""Fixtures of the kafka sink's tests: one Tansu broker for the session, a journal, helpers.

Every test uses topics under its own prefix (``topic_prefix``): the broker is shared.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from streamd.core import EventRecord, key_hash
from streamd.drain import RetrySettings, Route, SinkSpec
from streamd.drain.sinks.kafka import RESTART_REASONS, KafkaSettings, KafkaSink
from streamd.journal import Batch, Journal, WriterOptions, open_journal, utc_now

FAST = RetrySettings(backoff_base=0.05, backoff_cap=0.5, jitter=0.0, pause_after=50)


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(str(tmp_path / "journal.db"), WriterOptions()) as j:
        yield j


def record(
    key: str,
    *,
    stream: str = "activity",
    type: str | None = "com.adobe.platform.marketo.activity.standard.visitwebpage",
    munchkin_id: str | None = "123-ABC-456",
    lead_id: int | None = 7,
    occurred_at: str | None = "2026-05-01T10:00:00.000Z",
    raw: str | None = None,
) -> EventRecord:
    return EventRecord(
        key=key,
        key_hash=key_hash(key),
        stream=stream,
        type=type,
        munchkin_id=munchkin_id,
        activity_type_id=1 if stream == "activity" else None,
        lead_id=lead_id,
        occurred_at=occurred_at,
        raw=raw if raw is not None else f'{{"id": "{key}", "n": 1}}',
    )


async def append(journal: Journal, records: Sequence[EventRecord], source: str = "events") -> None:
    await journal.append(Batch(source, utc_now(), "batch", list(records)))


def kafka_spec(name: str, settings: KafkaSettings, **kw: Any) -> SinkSpec:
    """A SinkSpec for a KafkaSink, read the way the service does (full events, no
    envelopes: the producer process builds them; its restarts counted by reason)."""
    defaults: dict[str, Any] = {"workers": 2, "batch_size": 50, "linger": 0.01, "retry": FAST}
    defaults.update(kw)
    return SinkSpec(
        name,
        "kafka",
        Route(()),
        lambda: KafkaSink(settings),
        full_events=True,
        envelopes=False,
        restart_reasons=RESTART_REASONS,
        **defaults,
    )


def journal_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every journaled event with its columns, in journal order."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT seq, event_key, stream, type, source, munchkin_id, activity_type_id, "
            "lead_id, occurred_at, received_at, raw FROM events ORDER BY seq"
        ).fetchall()
    return [dict(row) for row in rows]


def expected_envelope(row: dict[str, Any]) -> dict[str, Any]:
    """The envelope of a journal row, built here from its columns (not by streamd)."""
    return {
        "id": row["event_key"],
        "seq": row["seq"],
        "stream": row["stream"],
        "type": row["type"],
        "source": row["source"],
        "munchkin_id": row["munchkin_id"],
        "activity_type_id": row["activity_type_id"],
        "lead_id": row["lead_id"],
        "occurred_at": row["occurred_at"],
        "received_at": row["received_at"],
        "event": json.loads(row["raw"]),
    }


def expected_headers(row: dict[str, Any], instance: str) -> dict[str, bytes]:
    columns = {
        "streamd-event-key": row["event_key"],
        "streamd-stream": row["stream"],
        "streamd-type": row["type"],
        "streamd-source": row["source"],
        "streamd-munchkin-id": row["munchkin_id"],
        "streamd-seq": str(row["seq"]),
        "streamd-occurred-at": row["occurred_at"],
        "streamd-received-at": row["received_at"],
        "streamd-instance": instance,
    }
    return {k: v.encode() for k, v in columns.items() if v is not None}


def dead_letters(path: str | Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT event_key, reason FROM dead_letters ORDER BY event_key"
        ).fetchall()
