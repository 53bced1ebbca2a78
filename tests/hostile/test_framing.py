"""Framing that two parsers could read two ways is refused before any app sees it.

Issue 13, cases 4 and 10: a request with both Content-Length and Transfer-Encoding was
answered and the connection kept, so a request hidden in its body was served next;
with two Authorization headers the last one won; HTTP/9.9 was served; a gzip body was
"400 not valid JSON".
"""

from __future__ import annotations

import gzip
import sqlite3

import pytest
import trio

from tests.conftest import fixture_bytes
from tests.integration.conftest import TOKEN, Server

from ._wire import exchange, post_head, read_answer, split_url


def journaled(server: Server) -> int:
    with sqlite3.connect(f"file:{server.journal}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
        return count


async def test_content_length_with_transfer_encoding_is_400_and_the_hidden_request_unserved(
    server: Server,
) -> None:
    hidden = b"GET /events?challenge=SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + hidden  # chunked: an empty body, then the hidden request
    head = post_head(
        "/events",
        {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Transfer-Encoding": "chunked",
        },
    )
    stream = await trio.open_tcp_stream(*split_url(server.url))
    async with stream:
        await stream.send_all(head + body)
        answer = await read_answer(stream)
        rest = b""
        with trio.move_on_after(2):
            while chunk := await stream.receive_some(65536):
                rest += chunk
    assert answer.status == 400
    assert b"Transfer-Encoding" in answer.body
    assert answer.headers[b"connection"] == b"close"
    assert answer.closed
    assert b"SMUGGLED" not in rest and b"HTTP/1.1" not in rest  # nothing answered after it


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ([("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer nope")], "authorization"),
        ([("Authorization", "Bearer nope"), ("Authorization", f"Bearer {TOKEN}")], "authorization"),
        ([("Content-Type", "application/json"), ("Content-Type", "text/plain")], "content-type"),
        (
            [("X-Adobe-Digital-Signature-1", "QUJD"), ("x-adobe-digital-signature-1", "REVG")],
            "x-adobe-digital-signature-1",
        ),
        (
            [("x-adobe-public-key1-path", "/prod/keys/pub-key-a.pem")] * 2,
            "x-adobe-public-key1-path",
        ),
    ],
)
async def test_a_header_that_must_come_once_twice_is_400(
    server: Server, headers: list[tuple[str, str]], name: str
) -> None:
    body = fixture_bytes("lads_single")
    lines = [f"{k}: {v}" for k, v in headers]
    if name != "authorization":
        lines.append(f"Authorization: Bearer {TOKEN}")
    lines.append(f"Content-Length: {len(body)}")
    request = ("POST /events HTTP/1.1\r\nHost: x\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
    answer = await exchange(server.url, request + body)
    assert answer.status == 400
    assert f"more than one {name} header".encode() in answer.body
    assert answer.closed
    assert journaled(server) == 0


@pytest.mark.parametrize("version", ["9.9", "2.0", "1.2"])
async def test_an_unknown_http_version_is_505(server: Server, version: str) -> None:
    body = fixture_bytes("lads_single")
    head = post_head(
        "/events",
        {"Authorization": f"Bearer {TOKEN}", "Content-Length": str(len(body))},
        version=version,
    )
    answer = await exchange(server.url, head + body)
    assert answer.status == 505
    assert f"HTTP/{version} is not supported".encode() in answer.body
    assert journaled(server) == 0


async def test_http_1_0_is_still_served(server: Server) -> None:
    body = fixture_bytes("lads_single")
    head = post_head(
        "/events",
        {"Authorization": f"Bearer {TOKEN}", "Content-Length": str(len(body))},
        version="1.0",
    )
    answer = await exchange(server.url, head + body)
    assert answer.status == 200
    assert journaled(server) == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "identity, gzip"])
async def test_a_compressed_body_is_415(server: Server, encoding: str) -> None:
    reply = await server.post(
        gzip.compress(fixture_bytes("lads_single")), headers={"Content-Encoding": encoding}
    )
    assert reply.status_code == 415
    assert "Content-Encoding" in reply.json()["error"]
    assert journaled(server) == 0


async def test_identity_encoding_is_accepted(server: Server) -> None:
    reply = await server.post(
        fixture_bytes("lads_single"), headers={"Content-Encoding": "identity"}
    )
    assert reply.status_code == 200


async def test_the_admin_listener_is_guarded_too(server: Server) -> None:
    admin = server.running.admin_binds[0]
    request = (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
        b"Authorization: Bearer b\r\n\r\n"
    )
    answer = await exchange(admin, request)
    assert answer.status == 400
    assert b"more than one authorization header" in answer.body
