"""Every error status with its message, and nothing stored when the answer is not 200."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from streamd.ingest import app as app_module
from tests.conftest import fixture_bytes
from tests.integration.conftest import TOKEN, Server, StartServer
from tests.integration.test_ingest import count


@contextlib.contextmanager
def write_locked(journal: Path) -> Iterator[sqlite3.Connection]:
    """Hold the journal's write lock from another connection: the writer stalls.

    Release early with ``conn.execute("ROLLBACK")``; released in any case on exit.
    """
    blocker = sqlite3.connect(journal, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield blocker
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()


async def assert_a_full_queue_is_503(server: Server) -> None:
    """With the writer stalled and ``max_queued_events = 10``: one 6-event batch waits,
    the next is answered 503 + Retry-After 2, and the first commits once released."""
    with write_locked(server.journal) as blocker:  # stall the writer: nothing can commit
        first: list[int] = []

        async def stuck() -> None:
            first.append((await server.post(fixture_bytes("lads_batch"))).status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck)
            journal = server.running.journal
            await server.wait_for(lambda: journal.statistics().queued_events == 6, "queued")
            response = await server.post(fixture_bytes("lads_batch"))
            assert response.status_code == 503
            assert response.headers["retry-after"] == "2"
            assert "queue is full" in response.json()["error"]
            blocker.execute("ROLLBACK")
    assert first == [200]
    assert count(server) == 6


async def raw_exchange(server: Server, request: bytes, *, read_until_close: bool = False) -> bytes:
    """Send raw bytes on a fresh connection and return the response head and body."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(10):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
                if not read_until_close and b"\r\n\r\n" in data:
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(
                        next(
                            h
                            for h in head.split(b"\r\n")
                            if h.lower().startswith(b"content-length")
                        ).split(b":")[1]
                    )
                    if len(body) >= length:
                        break
        return data


async def test_401_comes_before_the_body_is_read(server: Server) -> None:
    # A huge declared body and no credentials: answered at once, body never sent.
    request = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    response = await raw_exchange(server, request)
    assert response.startswith(b"HTTP/1.1 401")
    assert b"missing credentials" in response
    assert b'www-authenticate: bearer realm="streamd"' in response.lower()


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong-token-0123456789", "wrong-token-0123456789", "Bearer", "Basic dXNlcjpwYXNz"],
)
async def test_401_for_wrong_credentials(server: Server, authorization: str) -> None:
    response = await server.client.post(
        server.url + "/events",
        content=fixture_bytes("lads_single"),
        headers={"Authorization": authorization, "Content-Type": "application/json"},
    )
    assert response.status_code == 401
    assert response.json() == {"error": "invalid credentials"}
    assert count(server) == 0


async def test_413_on_declared_length_without_reading(server: Server) -> None:
    request = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: 9000000\r\n\r\n"
    )
    response = await raw_exchange(server, request)
    assert response.startswith(b"HTTP/1.1 413")
    assert b"body larger than the limit of 8388608 bytes" in response


async def test_413_while_reading_a_chunked_body(start_server: StartServer) -> None:
    server = await start_server("[server]\nmax_body_bytes = 4096\n")
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sent = 0
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )

        async def send_chunks() -> None:
            nonlocal sent
            chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
            try:
                for _ in range(10_000):
                    await stream.send_all(chunk)
                    sent += 1024
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        response = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_chunks)
            with trio.fail_after(10):
                while b"\r\n\r\n" not in response:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    response += data
            nursery.cancel_scope.cancel()
    assert response.startswith(b"HTTP/1.1 413")
    assert sent < 10_000 * 1024  # cut off early, never buffered whole
    assert count(server) == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_415_for_other_media_types(server: Server, content_type: str) -> None:
    response = await server.post(
        fixture_bytes("lads_single"), headers={"Content-Type": content_type}
    )
    assert response.status_code == 415
    assert content_type in response.json()["error"]
    assert count(server) == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "$: the body is empty"),
        (b'{"id": "a",', "$: not valid JSON: Input data was truncated"),
        (b'[{"id": "a"}, {"id": "b",}]', "trailing comma in object (byte 25)"),
        (b'[{"id": "a"}, {"type": "x", "specversion": "1.0"}]', "$[1]: the event has no id"),
        (b'{"activities": [{"marketoGUID": "a"}, {"leadId": 5}]}', "$.activities[1]: the activity"),
        (b"[1]", "$[0]: expected an object"),
        (b'{"hello": "world"}', "$: not a known delivery shape"),
        (b'{"id": "\xc3\x28"}', "not valid JSON"),
    ],
)
async def test_400_names_the_problem_and_stores_nothing(
    server: Server, body: bytes, message: str
) -> None:
    response = await server.post(body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert count(server) == 0


async def test_a_batch_with_one_bad_event_stores_nothing(server: Server) -> None:
    events = json.loads(fixture_bytes("lads_batch"))
    events[4]["data"] = {"munchkinId": "123-ABC-456"}
    del events[4]["id"], events[4]["eventid"]
    response = await server.post(json.dumps(events).encode())
    assert response.status_code == 400
    assert "$[4]: the event has no id" in response.json()["error"]
    assert count(server) == 0
    # The same batch, fixed, goes in whole.
    assert (await server.post(fixture_bytes("lads_batch"))).json()["accepted"] == 6


async def test_400_for_a_malformed_content_length(server: Server) -> None:
    request = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: 12abc\r\n\r\n{}"
    )
    response = await raw_exchange(server, request, read_until_close=True)
    assert response.startswith(b"HTTP/1.1 400")


async def test_503_when_the_writer_queue_is_full(start_server: StartServer) -> None:
    server = await start_server("[journal]\nmax_queued_events = 10\ncommit_budget = 30.0\n")
    await assert_a_full_queue_is_503(server)


async def test_a_full_queue_refuses_before_the_body_is_read(start_server: StartServer) -> None:
    # Issue 13, case 5: eight large bodies at once were read and decoded (711 MB of RSS)
    # and only then refused, because the queue was checked after decoding.
    server = await start_server("[journal]\nmax_queued_events = 6\ncommit_budget = 30.0\n")
    with write_locked(server.journal) as blocker:  # the queue fills: 6 of 6
        async with trio.open_nursery() as nursery:
            first: list[int] = []

            async def stuck() -> None:
                first.append((await server.post(fixture_bytes("lads_batch"))).status_code)

            nursery.start_soon(stuck)
            journal = server.running.journal
            await server.wait_for(lambda: journal.statistics().queued_events == 6, "queued")
            # Headers announcing 7 MB, and not one byte of the body: answered at once.
            head = (
                b"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + TOKEN.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 7000000\r\n\r\n"
            )
            response = await raw_exchange(server, head)
            assert response.startswith(b"HTTP/1.1 503")
            assert b"retry-after: 2" in response.lower()
            assert b"queue is full" in response
            blocker.execute("ROLLBACK")
    assert first == [200]


async def test_503_when_the_commit_exceeds_its_budget(start_server: StartServer) -> None:
    server = await start_server("[journal]\ncommit_budget = 0.3\n")
    with write_locked(server.journal):
        response = await server.post(fixture_bytes("lads_batch"))
    assert response.status_code == 503
    assert "did not commit within 0.3 s" in response.json()["error"]
    assert "retry-after" in response.headers
    # The sender's retry lands exactly once whatever the first attempt did.
    retry = await server.post(fixture_bytes("lads_batch"))
    assert retry.status_code == 200
    assert count(server) == 6


async def test_503_when_free_disk_is_below_the_floor(start_server: StartServer) -> None:
    server = await start_server("[journal]\nmin_free_disk_mib = 1000000000\n")
    response = await server.post(fixture_bytes("lads_single"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert "free disk space" in response.json()["error"]
    assert count(server) == 0


async def test_503_for_an_unexpected_error_never_a_traceback(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(body: bytes, **options: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app_module, "decode_delivery", explode)
    response = await server.post(fixture_bytes("lads_single"))
    assert response.status_code == 503
    assert response.json() == {"error": "internal error; retry later"}
    assert "retry-after" in response.headers
    assert "boom" in caplog.text


async def test_503_for_too_many_requests_in_flight(start_server: StartServer) -> None:
    server = await start_server("[server]\nmax_in_flight = 1\n[journal]\ncommit_budget = 30.0\n")
    statuses: list[int] = []
    with write_locked(server.journal) as blocker:
        async with trio.open_nursery() as nursery:

            async def stuck() -> None:
                statuses.append((await server.post(fixture_bytes("lads_single"))).status_code)

            nursery.start_soon(stuck)
            await server.wait_for(lambda: server.running.app.in_flight == 1, "in flight")
            response = await server.post(fixture_bytes("lads_batch"))
            assert response.status_code == 503
            assert "too many requests in flight" in response.json()["error"]
            blocker.execute("ROLLBACK")
    assert statuses == [200]


def test_data_dir_fixture_is_empty(data_dir: Path) -> None:
    assert list(data_dir.iterdir()) == []


async def test_a_truncated_body_stores_nothing_and_the_server_lives_on(server: Server) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    body = fixture_bytes("lads_batch")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[: len(body) // 2]
    )
    await stream.aclose()  # the sender dies mid-body
    # The next delivery is served normally, and the half body left no trace.
    response = await server.post(fixture_bytes("lads_single"))
    assert response.json() == {"accepted": 1, "duplicates": 0}
    assert count(server) == 1


async def test_oversized_headers_are_refused_and_the_server_lives_on(server: Server) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        # Headers arriving in pieces past h11's 16 KiB bound for an incomplete head.
        await stream.send_all(b"POST /events HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 20_000)
        response = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in response:
                data = await stream.receive_some(65536)
                if not data:
                    break
                response += data
    assert response.startswith(b"HTTP/1.1 431")
    assert count(server) == 0
    assert (await server.post(fixture_bytes("lads_single"))).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe\xfd", b"Bearer " + b"x" * 8000, b"\x00\x01", b"Bearer  "],
)
async def test_hostile_authorization_headers_get_401(server: Server, authorization: bytes) -> None:
    request = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    response = await raw_exchange(server, request, read_until_close=False)
    status = response.split(b" ")[1]
    assert status in (b"400", b"401"), response[:200]
    assert count(server) == 0
