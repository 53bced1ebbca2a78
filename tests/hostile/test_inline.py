"""The app run in the connection's task (streamd/service/inline.py), and plain requests
answered without hypercorn's stream (streamd/service/fast.py), answer every byte
sequence exactly as hypercorn's own way does.

Two edges run side by side (``serve_http``, real hypercorn, real loopback) with the same
app, one marked ``RUNS_INLINE`` and one not. Each case sends the same bytes to both, in
the same pieces, on fresh connections, and reads until the server closes: the bytes
that come back must be the same, ``Date`` aside. The app echoes what it was given (the
method, path, query, body and its pieces), so a difference in the scope or the body
would show as well. An instrument counts hypercorn's per-request app tasks, and another
the answers fast.py wrote or replayed, so each case also shows which way it went:
well-formed requests whose body is whole in one write start no task on the marked edge
(plain ones are answered by fast.py); a body still on its way, an ``Upgrade`` and the
unmarked edge start one each.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import h11
import orjson
import pytest
import trio

from streamd.asgi import BODY_FOLLOWS
from streamd.service import fast

from ._edge import APP_TASK, Spawned, edge
from ._wire import post_head, split_url

BODY = b'[{"id": "1"}, {"id": "2"}]'
CLOSE = {"Connection": "close"}
KEEP = {"Connection": "keep-alive"}
WAIT_100 = b""  # in a case's pieces: wait for the 100 Continue (compared by identity)


class _Echo:
    """Reads the body and answers 200 with what it saw (``BODY_FOLLOWS`` marked).
    ``/fail-before`` raises before answering, ``/fail-after`` after the head; a
    WebSocket is refused."""

    def __init__(self) -> None:
        self.seen = 0

    async def __call__(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        send: Callable[[Mapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close"})
            return
        pieces: list[int] = []
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            pieces.append(len(message.get("body", b"")))
            if not message.get("more_body", False):
                break
        self.seen += 1
        if scope["path"] == "/fail-before":
            raise RuntimeError("the app failed before its answer")
        what = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "version": scope["http_version"],
            "headers": len(scope["headers"]),
            "body": len(body),
            "pieces": pieces,
            "tail": body[-16:].decode("latin-1"),
        }
        answer = orjson.dumps(what)
        status = 200
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        if scope["path"] == "/no-length":  # h11 frames it (chunked)
            headers = headers[:1]
        elif scope["path"] == "/close":  # the answer ends the connection
            headers.append((b"connection", b"close"))
        elif scope["path"] == "/no-content":
            status, headers, answer = 204, [], b""
        elif scope["path"] == "/bad-header":  # h11 refuses to write it
            headers.append((b"x-bad", b"a\x00b"))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers,
                BODY_FOLLOWS: True,
            }
        )
        if scope["path"] == "/fail-after":
            raise RuntimeError("the app failed after its head")
        await send({"type": "http.response.body", "body": answer})


class _Marked(_Echo):
    streamd_runs_inline = True


async def conversation(url: str, pieces: list[bytes], *, half_close: bool = False) -> bytes:
    """Send ``pieces`` (a short pause between them; at ``WAIT_100``, first read until a
    100 Continue has come) on a fresh connection, then read until the server closes
    (bounded: 10 s). ``half_close`` ends the client's side after the last piece."""
    stream = await trio.open_tcp_stream(*split_url(url))
    received = b""
    async with stream:
        with trio.fail_after(10):
            for n, piece in enumerate(pieces):
                if piece is WAIT_100:  # as a client that waits for its 100 Continue
                    while not re.match(rb"HTTP/1.1 100 [^\r]*\r\n(.*\r\n)*\r\n\Z", received):
                        received += await stream.receive_some(65536)
                    continue
                if n:
                    await trio.sleep(0.05)
                await stream.send_all(piece)
            if half_close:
                stream.socket.shutdown(socket.SHUT_WR)
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    return re.sub(rb"(?im)^date: [^\r]*\r\n", b"", received)


def post(path: str, body: bytes = BODY, headers: dict[str, str] | None = None) -> bytes:
    return post_head(path, {"Content-Length": str(len(body)), **(headers or {})}) + body


def chunked(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = post_head(path, {"Transfer-Encoding": "chunked", **headers})
    half = len(body) // 2
    return (
        head
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
        + b"0\r\n\r\n"
    )


LARGE = b"[" + b",".join(b'{"id": "%06d"}' % n for n in range(9000)) + b"]"  # ~150 KiB
EXPECT = post_head("/x", {"Content-Length": str(len(BODY)), "Expect": "100-continue", **CLOSE})

# name: (pieces sent, half-close after, app tasks the marked edge starts)
CASES: dict[str, tuple[list[bytes], bool, int]] = {
    "one POST, whole": ([post("/events?a=1", headers=CLOSE)], False, 0),
    "three pipelined POSTs in one write": (
        [post("/a") + post("/b", b"[]") + post("/c", headers=CLOSE)],
        False,
        0,
    ),
    "the head, then the body later": (
        [post_head("/x", {"Content-Length": str(len(BODY)), **CLOSE}), BODY],
        False,
        1,
    ),
    "half the body, then the rest": ([post("/x", headers=CLOSE)[:-5], BODY[-5:]], False, 1),
    "a chunked body, whole": ([chunked("/x", BODY, headers=CLOSE)], False, 0),
    "fifteen chunks, whole in one write": (
        [
            post_head("/x", {"Transfer-Encoding": "chunked", **CLOSE})
            + b"1\r\nx\r\n" * 15
            + b"0\r\n\r\n"
        ],
        False,
        0,
    ),
    "a thousand one-byte chunks in one write (more than MAX_PIECES)": (
        [
            post_head("/x", {"Transfer-Encoding": "chunked", **CLOSE})
            + b"1\r\nx\r\n" * 1000
            + b"0\r\n\r\n"
        ],
        False,
        1,
    ),
    "a chunked body with a bad chunk size": (
        [post_head("/x", {"Transfer-Encoding": "chunked"}) + b"5\r\nabcde\r\nzz\r\n"],
        False,
        1,
    ),
    "Expect: 100-continue, the body once it came": ([EXPECT, WAIT_100, BODY], False, 1),
    "Expect: 100-continue, the body with the head": ([EXPECT + BODY], False, 1),
    "a GET": ([b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"], False, 0),
    "a HEAD (no body in the answer)": (
        [b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
        False,
        0,
    ),
    "HTTP/1.0": ([b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\n[]"], False, 0),
    "the app fails before its answer": ([post("/fail-before")], False, 0),
    "the app fails after its head": ([post("/fail-after")], False, 0),
    "a body larger than one read": ([post("/big", LARGE, headers=CLOSE)], False, 1),
    "a short body, then the client's end": (
        [post_head("/x", {"Content-Length": "50"}) + BODY],
        True,
        1,
    ),
    "kept alive, then the client's end": ([post("/a") + post("/b")], True, 0),
    "a good request, then a malformed one": (
        [post("/a") + b"POST / HTTP/1.1\r\nbad\r\n\r\n"],
        False,
        0,
    ),
    "Content-Length and Transfer-Encoding": (
        [post_head("/x", {"Content-Length": "2", "Transfer-Encoding": "chunked"}) + b"0\r\n\r\n"],
        False,
        0,  # h11 takes the chunked framing; streamd's framing guard refuses it, inline
    ),
    # Plain requests on kept-alive connections: what streamd/service/fast.py answers
    # itself, and where it hands over to h11 and hypercorn.
    "plain POSTs kept alive, then the client's end": (
        [post("/a", headers=KEEP) + post("/b?x=%20y") + post("/c", b"")],
        True,
        0,
    ),
    "plain POSTs, one at a time": ([post("/a"), post("/b"), post("/c")], True, 0),
    "a plain GET with no body": ([b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], True, 0),
    "a percent-encoded path and odd header spacing": (
        [post_head("/a%2Fb%20c", {"X-Pad": "  v  ", "Content-Length": "2"}) + b"[]"],
        True,
        0,
    ),
    "a Content-Length with leading zeros": (
        [post_head("/a", {"Content-Length": "0002"}) + b"[]"],
        True,
        0,
    ),
    "two Content-Length headers, equal": (
        [post_head("/a", {"Content-Length": "2"})[:-2] + b"Content-Length: 2\r\n\r\n[]"],
        True,
        0,
    ),
    "two Host headers": ([b"POST /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"], True, 0),
    "no Host header": ([b"POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"], True, 0),
    "a folded header line": (
        [b"POST /a HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n"],
        True,
        0,
    ),
    "bare LF line ends": ([b"POST /a HTTP/1.1\nHost: a\nContent-Length: 2\n\n[]"], True, 0),
    "a lowercase method and an absolute target": (
        [
            b"post /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"POST http://a/b HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        ],
        True,
        0,
    ),
    "a control byte in a header value": (
        [b"POST /a HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\nContent-Length: 0\r\n\r\n"],
        True,
        0,
    ),
    "a plain POST, then one whose body is still coming": (
        [post("/a") + post("/b")[:-3], post("/b")[-3:], post("/c")],
        True,
        1,
    ),
    "an answer without a length, kept alive": ([post("/no-length") + post("/a")], True, 0),
    "an answer that closes the connection": ([post("/close") + post("/a")], True, 0),
    "a 204 answer": ([post("/no-content") + post("/a")], True, 0),
    "an answer header h11 refuses": ([post("/bad-header") + post("/a")], True, 0),
    "a head over h11's limit": (
        [post_head("/a", {"X-Big": "x" * 20000, "Content-Length": "2"}) + b"[]"],
        True,
        0,
    ),
    "a WebSocket upgrade": (
        [
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ],
        False,
        1,
    ),
}


# name: (answers streamd/service/fast.py wrote itself, answers it replayed through h11
# and hypercorn); a case not named here has neither (h11 read all of it).
FAST: dict[str, tuple[int, int]] = {
    "three pipelined POSTs in one write": (2, 0),  # the third asks to close: h11's
    "the app fails before its answer": (0, 1),  # hypercorn's 500
    "the app fails after its head": (0, 1),
    "kept alive, then the client's end": (2, 0),
    "a good request, then a malformed one": (1, 0),
    "plain POSTs kept alive, then the client's end": (3, 0),
    "plain POSTs, one at a time": (3, 0),
    "a plain GET with no body": (1, 0),
    "a percent-encoded path and odd header spacing": (1, 0),
    "a Content-Length with leading zeros": (1, 0),
    "a control byte in a header value": (1, 0),  # h11 allows it too
    "a plain POST, then one whose body is still coming": (2, 0),
    "an answer without a length, kept alive": (1, 1),
    "an answer that closes the connection": (0, 1),
    "a 204 answer": (1, 1),
    "an answer header h11 refuses": (0, 1),  # and the connection ends, as hypercorn's
}


@pytest.mark.parametrize("name", list(CASES))
async def test_the_marked_edge_answers_as_hypercorns_way_does(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces, half_close, tasks = CASES[name]
    spawned = Spawned()
    ways = {"written": 0, "replayed": 0}
    write, replay = fast._Answer._write, fast._Answer._replay

    async def written(answer: Any, data: bytes) -> None:
        ways["written"] += 1
        await write(answer, data)

    async def replayed(answer: Any) -> None:
        ways["replayed"] += 1
        await replay(answer)

    monkeypatch.setattr(fast._Answer, "_write", written)
    monkeypatch.setattr(fast._Answer, "_replay", replayed)
    async with edge(_Echo()) as plain, edge(_Marked()) as marked:
        expected = await conversation(plain.url, pieces, half_close=half_close)
        assert ways == {"written": 0, "replayed": 0}  # the unmarked edge: hypercorn's way
        trio.lowlevel.add_instrument(spawned)
        try:
            got = await conversation(marked.url, pieces, half_close=half_close)
        finally:
            trio.lowlevel.remove_instrument(spawned)
    assert expected.startswith(b"HTTP/1.")  # each case gets an answer of some kind
    assert got == expected
    assert spawned.names[APP_TASK] == tasks, spawned.names
    assert (ways["written"], ways["replayed"]) == FAST.get(name, (0, 0)), ways


async def test_a_replay_h11_cannot_read_closes_only_that_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Cannot happen (tests/unit/test_fast_plain.py), so forced here: were h11 to read a
    plain request differently when fast.py replays its answer, that connection closes
    unanswered, an error is logged, and the server goes on serving."""
    async with edge(_Marked()) as marked:
        with monkeypatch.context() as patch:
            patch.setattr(h11.Connection, "next_event", lambda self: h11.NEED_DATA)
            got = await conversation(marked.url, [post("/no-length")])
        assert got == b""  # closed, nothing written
        again = await conversation(marked.url, [post("/a", headers=CLOSE)])
    assert again.startswith(b"HTTP/1.1 200 ")
    assert "h11 read a plain request differently" in caplog.text
