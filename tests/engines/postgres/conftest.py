"""One PostgreSQL 15 server for the session; a fresh database for each test."""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamd.core import decode_delivery
from streamd.drain import RetrySettings, SinkSpec
from streamd.drain.routing import Route
from streamd.drain.sinks.postgres import PostgresSettings, PostgresSink
from streamd.journal import Batch, Journal, WriterOptions, open_journal, utc_now
from tests.conftest import fixture_bytes
from tests.engines._postgres import PASSWORD, PostgresServer

FIXTURE_NAMES = (
    "lads_batch", "lads_single", "legacy_push", "notification", "audit_wrapper",
    "audit_old_wrapper",
)  # fmt: skip
FAST = RetrySettings(backoff_base=0.05, backoff_cap=0.2, jitter=0.0, pause_after=1000)
_numbers = itertools.count(1)


@dataclass
class Database:
    server: PostgresServer
    name: str
    dsn: str

    def settings(self, **kw: Any) -> PostgresSettings:
        values: dict[str, Any] = {
            "dsn": self.dsn, "password": PASSWORD, "instance": "receiver-a", "sink": "pg",
            "connect_timeout": 2.0,
        }  # fmt: skip
        values.update(kw)
        return PostgresSettings(**values)

    def sql(
        self, statement: str, params: tuple[object, ...] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit, in UTC); its rows."""
        with self.server.connect(self.name) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture
def pg(pg_server: PostgresServer) -> Database:
    if not pg_server.running:  # a failed outage test left it stopped
        pg_server.start()
    name = f"t{os.getpid()}_{next(_numbers)}"
    return Database(pg_server, name, pg_server.create_database(name))


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(str(tmp_path / "journal.db"), WriterOptions()) as j:
        yield j


async def append_fixtures(journal: Journal) -> int:
    """Every contract example delivery, journaled as ingest would; how many events."""
    total = 0
    for name in FIXTURE_NAMES:
        delivery = decode_delivery(fixture_bytes(name))
        await journal.append(Batch(name, utc_now(), delivery.shape, delivery.events))
        total += len(delivery.events)
    return total


def journal_rows(journal: Journal) -> dict[str, tuple[Any, ...]]:
    """event_key -> (seq, stream, type, munchkin_id, activity_type_id, lead_id,
    occurred_at, received_at, source, raw) as the journal holds them."""
    conn = sqlite3.connect(journal.path)
    try:
        return {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT event_key, seq, stream, type, munchkin_id, activity_type_id, lead_id, "
                "occurred_at, received_at, source, raw FROM events"
            )
        }
    finally:
        conn.close()


def pg_spec(name: str, sink: PostgresSink, **kw: Any) -> SinkSpec:
    """As the service builds it for a postgres sink: full events, destination counts."""
    values: dict[str, Any] = {
        "workers": 2, "batch_size": 50, "linger": 0.01, "retry": FAST, "timeout": 10.0,
        "full_events": True, "dedups": True,
    }  # fmt: skip
    values.update(kw)
    return SinkSpec(name, "postgres", Route(()), lambda: sink, **values)
