"""Every fixture through the real app under hypercorn, over loopback, with a real client."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import fixture_bytes
from tests.integration.conftest import Server, StartServer

FIXTURE_COUNTS = {
    "legacy_push": 4,
    "lads_single": 1,
    "lads_batch": 6,
    "audit_wrapper": 1,
    "audit_old_wrapper": 1,
    "notification": 1,
}


def query(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def count(server: Server) -> int:
    value = query(server.journal, "SELECT count(*) FROM events")[0][0]
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize("name", sorted(FIXTURE_COUNTS))
async def test_each_fixture_is_journaled_then_deduplicated(server: Server, name: str) -> None:
    body = fixture_bytes(name)
    first = await server.post(body)
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": FIXTURE_COUNTS[name], "duplicates": 0}
    assert count(server) == FIXTURE_COUNTS[name]
    again = await server.post(body)
    assert again.status_code == 200
    assert again.json() == {"accepted": 0, "duplicates": FIXTURE_COUNTS[name]}
    assert count(server) == FIXTURE_COUNTS[name]


async def test_rows_keys_and_columns(server: Server) -> None:
    for name in FIXTURE_COUNTS:
        assert (await server.post(fixture_bytes(name))).status_code == 200
    rows = query(
        server.journal,
        "SELECT event_key, stream, munchkin_id, activity_type_id, lead_id, occurred_at, source "
        "FROM events WHERE event_key IN (?, ?, ?) ORDER BY seq",
        "8f1c9a52-3b7e-4c1d-a2f0-000000000104",
        "b5c0e3a4-6a0e-4a8f-9d55-0b7c2f000201",
        "c9d8e7f6-1111-4c2b-8a3d-000000000001",
    )
    assert rows == [
        ("8f1c9a52-3b7e-4c1d-a2f0-000000000104", "activity", "123-ABC-456", 37, 4400,
         "2026-04-21T15:28:43.000Z", "events"),
        ("b5c0e3a4-6a0e-4a8f-9d55-0b7c2f000201", "audit", "123-ABC-456", None, None,
         "2024-07-11T13:20:42.755Z", "events"),
        ("c9d8e7f6-1111-4c2b-8a3d-000000000001", "notification", "123-ABC-456", None, None,
         "2021-05-27T15:22:37.489Z", "events"),
    ]  # fmt: skip
    (raw,) = query(
        server.journal,
        "SELECT raw FROM events WHERE event_key = ?",
        "3a1f4e2c-0d41-4b4e-9f7e-5f2d1c000001",
    )
    assert raw[0] == fixture_bytes("lads_single").strip().decode()


async def test_migration_same_activity_by_push_and_io_is_journaled_once(server: Server) -> None:
    assert (await server.post(fixture_bytes("legacy_push"))).json()["accepted"] == 4
    io_event = {
        "eventid": "8f1c9a52-3b7e-4c1d-a2f0-000000000101",
        "id": "8f1c9a52-3b7e-4c1d-a2f0-000000000101",
        "specversion": "1.0",
        "type": "com.adobe.platform.marketo.activity.standard.visitwebpage",
        "data": {"munchkinId": "123-ABC-456", "leadId": "4411", "activityTypeId": 1},
    }
    response = await server.post(json.dumps([io_event]).encode())
    assert response.json() == {"accepted": 0, "duplicates": 1}
    assert count(server) == 4


async def test_headers_are_recorded_with_the_delivery(server: Server) -> None:
    headers = {"x-adobe-event-id": "evt-1", "x-adobe-retry-count": "2"}
    assert (await server.post(fixture_bytes("lads_single"), headers=headers)).status_code == 200
    assert query(
        server.journal, "SELECT source, shape, adobe_event_id, retry_count, events FROM deliveries"
    ) == [("events", "cloudevent", "evt-1", 2, 1)]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=UTF-8",
        "application/cloudevents+json; charset=UTF-8",
        "application/cloudevents-batch+json",
        "Application/JSON",
    ],
)
async def test_accepted_media_types(server: Server, content_type: str | None) -> None:
    headers = server.auth()
    if content_type is not None:
        headers["Content-Type"] = content_type
    request = server.client.build_request(
        "POST", server.url + "/events", content=fixture_bytes("lads_single"), headers=headers
    )
    assert ("content-type" in request.headers) == (content_type is not None)
    response = await server.client.send(request)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("headers", "query_string"),
    [
        ({"Authorization": "Bearer integration-token-0123456789"}, ""),
        ({"Authorization": "integration-token-0123456789"}, ""),
        ({}, "?access_token=integration-token-0123456789"),
    ],
)
async def test_every_documented_token_form(
    server: Server, headers: dict[str, str], query_string: str
) -> None:
    response = await server.client.post(
        server.url + "/events" + query_string,
        content=fixture_bytes("lads_single"),
        headers={"Content-Type": "application/json", **headers},
    )
    assert response.status_code == 200, response.text


async def test_challenge_get_needs_no_credentials(server: Server) -> None:
    plain = await server.client.get(server.url + "/events?challenge=8ec8d794")
    assert plain.status_code == 200
    assert plain.text == "8ec8d794"
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.headers["x-content-type-options"] == "nosniff"
    as_json = await server.client.get(
        server.url + "/events?challenge=8ec8d794", headers={"Accept": "application/json"}
    )
    assert as_json.json() == {"challenge": "8ec8d794"}


@pytest.mark.parametrize(
    ("query_string", "message"),
    [
        ("", "GET is only for the challenge handshake"),
        ("?challenge=", "GET is only for the challenge handshake"),
        ("?challenge=%3Cscript%3E", "challenge must be 1 to 256 URL-safe characters"),
        ("?challenge=" + "a" * 257, "challenge must be 1 to 256 URL-safe characters"),
        ("?" + "&".join(["x=1"] * 30), "too many query parameters"),
    ],
)
async def test_bad_challenges(server: Server, query_string: str, message: str) -> None:
    response = await server.client.get(server.url + "/events" + query_string)
    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_validation_url_post_is_answered_and_never_journaled(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    response = await server.post(fixture_bytes("challenge_post"))
    assert response.status_code == 200
    assert response.json()["accepted"] == 0
    assert count(server) == 0
    assert "https://csm.adobe.io/csm/registrations/validate" in caplog.text


async def test_sources_side_by_side_with_their_own_tokens(
    start_server: StartServer, data_dir: Path
) -> None:
    (data_dir / "legacy-token").write_text("legacy-token-0123456789\n")
    server = await start_server(
        f"""
[[sources]]
name = "legacy"
path = "/marketo/push"
token_files = ["{data_dir / "legacy-token"}"]
[[sources]]
name = "io"
path = "/adobe/io"
query_token = false
"""
    )
    legacy = await server.client.post(
        server.url + "/marketo/push?access_token=legacy-token-0123456789",
        content=fixture_bytes("legacy_push"),
    )
    assert legacy.status_code == 200, legacy.text
    # The I/O source does not take the legacy token, nor a token in the query.
    wrong = await server.post(
        fixture_bytes("lads_batch"),
        path="/adobe/io",
        headers=server.auth("legacy-token-0123456789"),
    )
    assert wrong.status_code == 401
    query_form = await server.client.post(
        server.url + f"/adobe/io?access_token={server.token}", content=fixture_bytes("lads_batch")
    )
    assert query_form.status_code == 401
    io = await server.post(fixture_bytes("lads_batch"), path="/adobe/io/")
    assert io.status_code == 200
    assert query(
        server.journal, "SELECT source, count(*) FROM events GROUP BY source ORDER BY 1"
    ) == [
        ("io", 6),
        ("legacy", 4),
    ]
    assert (await server.post(fixture_bytes("lads_single"))).status_code == 404


async def test_concurrent_requests_are_all_committed(server: Server) -> None:
    import trio

    statuses: list[int] = []

    async def send(i: int) -> None:
        events = [
            {"id": f"c-{i}-{j}", "specversion": "1.0", "type": "t", "data": {"leadId": j}}
            for j in range(20)
        ]
        statuses.append((await server.post(json.dumps(events).encode())).status_code)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(send, i)
    assert statuses == [200] * 40
    assert count(server) == 800


async def test_http_client_sees_json_errors_not_tracebacks(server: Server) -> None:
    response = await server.post(b"{not json")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "Traceback" not in response.text
    assert isinstance(response.json()["error"], str)


async def test_unknown_path_and_method(server: Server) -> None:
    missing = await server.post(fixture_bytes("lads_single"), path="/nope")
    assert missing.status_code == 404
    assert "no source at /nope" in missing.json()["error"]
    put = await server.client.put(server.url + "/events", content=b"{}", headers=server.auth())
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, POST"


def test_httpx_is_a_real_client() -> None:
    # The integration suite talks HTTP/1.1 over a real socket, not an ASGI transport.
    assert httpx.AsyncClient().__class__.__module__.startswith("httpx")


async def test_each_answer_is_written_with_one_send(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest app marks its answers ``BODY_FOLLOWS``: head and body leave in one
    ``send_all`` (tests/hostile/test_answer_writes.py has the mechanism), for a 200, a
    duplicate's 200, a 400, a 401 and a 404 alike, on one kept-alive connection."""
    port = int(server.url.rsplit(":", 1)[1])
    sent: list[bytes] = []
    real = trio.SocketStream.send_all

    async def recording(self: trio.SocketStream, data: Any) -> None:
        if self.socket.getsockname()[1] == port:
            sent.append(bytes(data))
        await real(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", recording)
    body = fixture_bytes("legacy_push")
    answers = [
        await server.post(body),
        await server.post(body),
        await server.post(b'{"nope'),
        await server.post(body, headers={"Authorization": "Bearer wrong-token-0123456789"}),
        await server.post(body, path="/nowhere"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 400, 401, 404]
    assert len(sent) == len(answers), [s[:20] for s in sent]
    for answer, data in zip(answers, sent, strict=True):
        assert data.startswith(b"HTTP/1.1 %d" % answer.status_code)
        assert data.endswith(answer.content)
