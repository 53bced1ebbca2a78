"""The ASGI app's status policy where real HTTP cannot reach a state on demand."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from streamd.auth import TokenSet
from streamd.ingest import IngestApp, Limits, Source
from streamd.journal import WriterOptions, open_journal
from tests.conftest import fixture_bytes

TOKEN = "policy-token-0123456789"


async def call(app: IngestApp, body: bytes) -> tuple[int, dict[bytes, bytes], Any]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/events",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer " + TOKEN.encode())],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Mapping[str, Any]] = []

    async def receive() -> Mapping[str, Any]:
        return messages.pop(0)

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body_message = sent
    return start["status"], dict(start["headers"]), orjson.loads(body_message["body"])


async def test_after_shutdown_began_posts_get_503_and_nothing_is_journaled(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with open_journal(str(path), WriterOptions()) as journal:
        app = IngestApp(
            [Source("events", "/events", TokenSet([TOKEN]))],
            journal,
            Limits(max_body_bytes=1 << 20, max_in_flight=4),
        )
        status, _, payload = await call(app, fixture_bytes("lads_single"))
        assert (status, payload) == (200, {"accepted": 1, "duplicates": 0})
        app.begin_shutdown()
        status, headers, payload = await call(app, fixture_bytes("lads_batch"))
        assert status == 503
        assert headers[b"retry-after"] == b"10"
        assert payload == {"error": "streamd is shutting down"}
        assert journal.statistics().events == 1
        assert app.in_flight == 0
        assert app.responses == {200: 1, 503: 1}
