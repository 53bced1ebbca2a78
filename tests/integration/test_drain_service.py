"""The drain inside the real service: ingest over loopback, sinks deliver, stop saves cursors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import fixture_bytes
from tests.drain.receiver import Receiver, running

from .conftest import StartServer


async def test_posted_events_reach_http_and_file_sinks(
    start_server: StartServer, data_dir: Path
) -> None:
    async with running(Receiver()) as rx:
        server = await start_server(
            f"""
[[sinks]]
name = "hook"
kind = "http"
[sinks.http]
url = "{rx.url}"
[sinks.pool]
linger = 0.01
[[sinks]]
name = "audit-files"
kind = "file"
[sinks.file]
directory = "out"
[[sinks.filters]]
streams = ["audit"]
"""
        )
        for name in ("lads_batch", "audit_wrapper", "legacy_push"):
            response = await server.post(fixture_bytes(name))
            assert response.status_code == 200, response.text
        drain = server.running.drain
        last = server.running.journal.last_seq
        await server.wait_for(
            lambda: all(s.cursor == last for s in drain.statistics()), "both sinks caught up"
        )
        statuses = {s.name: s for s in await drain.sinks()}
        assert statuses["hook"].lag_events == 0 and statuses["hook"].lag_seconds == 0.0
    conn = sqlite3.connect(server.journal)
    try:
        keys = [k for (k,) in conn.execute("SELECT event_key FROM events ORDER BY seq")]
        audit = [k for (k,) in conn.execute("SELECT event_key FROM events WHERE stream = 'audit'")]
    finally:
        conn.close()
    assert [i for r in rx.requests for i in r.ids] == keys
    files = list((data_dir / "out").iterdir())
    got = [json.loads(line)["id"] for f in files for line in f.read_text().splitlines()]
    assert got == audit and audit


async def test_journal_over_its_cap_answers_503_with_retry_after(
    start_server: StartServer,
) -> None:
    server = await start_server("[retention]\nmax_bytes = 4096\n")
    await server.wait_for(lambda: server.running.retention.stats.refusing, "cap reached")
    response = await server.post(fixture_bytes("lads_batch"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert "journal is full" in response.json()["error"]
