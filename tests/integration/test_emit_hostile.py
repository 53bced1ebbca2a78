"""The emulator against receivers and identity providers that answer badly.

A raw trio socket server sends exactly the bytes each case needs; the emulator must
count the attempt (and retry or give up per the protocol), never crash or hang.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import orjson
import pytest
import trio

from streamd.cli import main
from streamd.emit.accounting import Ledger
from streamd.emit.asgi import Reply, Request, serve_handler
from streamd.emit.http import Connection, HttpError, Target
from streamd.emit.oauth import ClientCredentials, TokenFetchError
from streamd.emit.sender import EmitOptions, OAuthSettings, run_emit


async def _raw_server(
    nursery: trio.Nursery, answer: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _read_request(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    return head


def _replying(raw: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def answer(stream: trio.SocketStream) -> None:
        try:
            await _read_request(stream)
            await stream.send_all(raw)
        finally:
            await stream.aclose()

    return answer


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"garbage\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "refused"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "closed the connection"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70_000, "head too large"),
        (b"", "closed the connection mid-response"),
    ],
)
async def test_a_broken_answer_is_an_http_error(raw: bytes, message: str) -> None:
    async with trio.open_nursery() as nursery:
        port = await _raw_server(nursery, _replying(raw))
        conn = Connection(Target.parse(f"http://127.0.0.1:{port}/e"))
        with pytest.raises(HttpError, match=message):
            await conn.post(b"{}")
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_a_body_delimited_by_close_and_chunked_bodies_are_read() -> None:
    async with trio.open_nursery() as nursery:
        port = await _raw_server(nursery, _replying(b"HTTP/1.0 200 OK\r\n\r\nall of it"))
        conn = Connection(Target.parse(f"http://127.0.0.1:{port}/e"))
        assert (await conn.post(b"{}")).body == b"all of it"
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        port = await _raw_server(nursery, _replying(chunked))
        conn = Connection(Target.parse(f"http://127.0.0.1:{port}/e"))
        assert (await conn.post(b"{}")).body == b"abc"
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_the_sender_counts_garbage_answers_and_retries_them() -> None:
    answers = iter([b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])

    async def answer(stream: trio.SocketStream) -> None:
        try:
            await _read_request(stream)
            await stream.send_all(next(answers))
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await _raw_server(nursery, answer)
        opts = EmitOptions(
            url=f"http://127.0.0.1:{port}/e", count=100, batch=100, time_scale=3600.0
        )
        summary = await run_emit(opts, ledger=Ledger(None))
        nursery.cancel_scope.cancel()
    assert summary["outcomes"] == {"200": 1, "connection": 1}
    assert summary["events_acked"] == 100 and summary["retries"] == 1


async def test_a_receiver_that_never_answers_is_a_timeout() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await _raw_server(nursery, silent)
        opts = EmitOptions(
            url=f"http://127.0.0.1:{port}/e",
            mode="io",
            sign=False,
            challenge=False,
            count=20,
            timeout=0.2,
            drain=0.5,
            time_scale=600.0,
        )
        summary = await run_emit(opts, ledger=Ledger(None))
        nursery.cancel_scope.cancel()
    assert set(summary["outcomes"]) == {"timeout"}
    assert summary["events_unresolved"] == 20 and summary["events_acked"] == 0


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"not json", "no access_token in a JSON object"),
        (200, b"[1, 2]", "no access_token in a JSON object"),
        (200, b'{"token_type": "bearer"}', "no access_token"),
        (200, orjson.dumps({"access_token": "a\r\nX-Evil: 1"}), "not a usable string"),
        (200, orjson.dumps({"access_token": 12345}), "not a usable string"),
        (200, orjson.dumps({"access_token": "t", "expires_in": "soon"}), "no access_token"),
        (401, b'{"error": "invalid_client"}', "answered 401"),
    ],
)
async def test_identity_provider_answers_that_give_no_token(
    status: int, body: bytes, message: str
) -> None:
    async def idp(request: Request) -> Reply:
        return Reply(status, body)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_handler, idp, "127.0.0.1:0")
        client = ClientCredentials(binds[0] + "/token", "id", "secret", timeout=5)
        with pytest.raises(TokenFetchError, match=message):
            await client.token()
        nursery.cancel_scope.cancel()


async def test_a_401_from_the_receiver_makes_the_sender_fetch_a_new_token() -> None:
    issued: list[str] = []
    seen: list[str] = []

    async def idp(request: Request) -> Reply:
        issued.append(f"token-{len(issued)}")
        return Reply(200, orjson.dumps({"access_token": issued[-1]}))

    async def receiver(request: Request) -> Reply:
        seen.append(request.headers.get("authorization", ""))
        return Reply(200 if seen[-1] == "Bearer token-1" else 401, b"{}")

    async with trio.open_nursery() as nursery:
        idp_url = (await nursery.start(serve_handler, idp, "127.0.0.1:0"))[0]
        url = (await nursery.start(serve_handler, receiver, "127.0.0.1:0"))[0]
        opts = EmitOptions(
            url=url,
            oauth=OAuthSettings(idp_url, "id", "secret"),
            count=100,
            batch=100,
            time_scale=3600.0,
        )
        summary = await run_emit(opts, ledger=Ledger(None))
        nursery.cancel_scope.cancel()
    assert seen == ["Bearer token-0", "Bearer token-1"]
    assert summary["token_fetches"] == 2 and summary["events_acked"] == 100


async def test_a_chunked_answer_in_pieces_then_the_connection_is_reused() -> None:
    """Chunks with extensions and trailers, a few bytes per packet; the connection stays
    open for the next request (one connect for both)."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Reply: yes\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    served: list[bytes] = []

    async def answer(stream: trio.SocketStream) -> None:
        try:
            for _ in range(2):
                served.append(await _read_request(stream))
                for i in range(0, len(chunked), 7):
                    await stream.send_all(chunked[i : i + 7])
                    await trio.sleep(0)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        port = await _raw_server(nursery, answer)
        conn = Connection(Target.parse(f"http://127.0.0.1:{port}/e"), {"X-Sender": "emit"})
        first = await conn.post(b"{}")
        second = await conn.request("GET", "/status", [("Accept", "*/*")])
        await conn.aclose()
        nursery.cancel_scope.cancel()
    for response in (first, second):
        assert (response.status, response.body) == (200, b"hello world!")
        assert response.headers["x-reply"] == "yes"
    assert conn.connects == 1
    assert served[0].startswith(b"POST /e HTTP/1.1\r\n") and b"X-Sender: emit" in served[0]
    assert served[1].startswith(b"GET /status HTTP/1.1\r\n")


def test_a_malformed_answer_is_one_line_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``streamd emit`` whose identity provider answers garbage: the attempt is logged as
    one clear line naming the problem, the run ends (exit 1), and no traceback."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def garbage() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 two hundred OK\r\n\r\n")

    thread = threading.Thread(target=garbage, daemon=True)
    thread.start()
    secret = tmp_path / "secret"
    secret.write_text("a-client-secret-of-some-length\n")
    try:
        status = main(
            [
                "emit", "--to", "http://127.0.0.1:9/events", "--mode", "legacy", "--count", "1",
                "--oauth-url", f"http://127.0.0.1:{port}/token", "--client-id", "id",
                "--client-secret-file", str(secret), "--drain", "1",
            ]
        )  # fmt: skip
    finally:
        stop.set()
        thread.join(10)
        listener.close()
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err, err
    expected = f"identity provider: bad status line from http://127.0.0.1:{port} (illegal"
    assert any(expected in line for line in err.splitlines()), err
