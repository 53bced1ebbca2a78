"""How the edge writes answers and bounds reads (streamd/service/http.py, ``_Connection``).

hypercorn 0.18 writes a response's head and its body with two ``send_all`` calls, each
behind the send lock and a shielded scope. An app that marks its ``http.response.start``
with ``BODY_FOLLOWS`` (it sends the whole body right after) gets both written with one.
These tests run the edge itself (``serve_http``, real hypercorn, real loopback) and count
the server side's ``send_all`` calls; they also check that a marked head is never left
unwritten when no body follows, and that hypercorn's ``read_timeout`` still ends a
connection whose read waits too long (the read loop is streamd's own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from streamd.asgi import BODY_FOLLOWS

from ._edge import App, edge
from ._wire import closes, post_head, read_answer, split_url

BODY = b'[{"id": "1"}]'
REQUEST = post_head("/", {"Content-Length": str(len(BODY))}) + BODY


def answering(*, mark: bool, fail_after_head: bool = False) -> App:
    """An app that reads the body and answers 200 "ok" (Content-Length framed), its
    head marked ``BODY_FOLLOWS`` when ``mark``; ``fail_after_head`` raises instead of
    sending the body."""

    async def app(
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        send: Callable[[Mapping[str, Any]], Awaitable[None]],
    ) -> None:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"2")],
        }
        if mark:
            start[BODY_FOLLOWS] = True
        await send(start)
        if fail_after_head:
            raise RuntimeError("the app failed after its head")
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@dataclass
class Sends:
    """The ``send_all`` calls of streams whose local port is ``port`` (the listener's:
    the server side; the tests' clients never have it)."""

    port: int = 0
    sent: list[bytes] = field(default_factory=list)


@pytest.fixture
def server_sends(monkeypatch: pytest.MonkeyPatch) -> Sends:
    """Records each server-side ``send_all`` as it passes to the real one."""
    sends = Sends()
    real = trio.SocketStream.send_all

    async def recording(self: trio.SocketStream, data: Any) -> None:
        if self.socket.getsockname()[1] == sends.port:
            sends.sent.append(bytes(data))
        await real(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", recording)
    return sends


@pytest.mark.parametrize(("mark", "writes"), [(True, 1), (False, 2)])
async def test_a_marked_answer_is_written_with_one_send(
    server_sends: Sends, mark: bool, writes: int
) -> None:
    requests = 5
    async with edge(answering(mark=mark)) as server:
        server_sends.port = server.port
        stream = await trio.open_tcp_stream(*split_url(server.url))
        async with stream:
            for _ in range(requests):
                await stream.send_all(REQUEST)
                answer = await read_answer(stream, check_close=False)
                assert (answer.status, answer.body) == (200, b"ok")
    # Unmarked: hypercorn's head, then the body (h11's empty end is not written).
    sent = server_sends.sent
    assert len(sent) == writes * requests, sent
    assert all(s.startswith(b"HTTP/1.1 200") for s in sent[::writes])
    assert all(s.endswith(b"\r\n\r\nok") for s in sent) == mark


async def test_a_marked_head_is_written_when_the_body_is_suppressed(
    server_sends: Sends,
) -> None:
    """A HEAD request: h11 writes no body, so the held head goes out with the (empty)
    end of the response, and the connection serves the next request."""
    async with edge(answering(mark=True)) as server:
        server_sends.port = server.port
        stream = await trio.open_tcp_stream(*split_url(server.url))
        async with stream:
            await stream.send_all(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            with trio.fail_after(5):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive_some(4096)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n"), data
            await stream.send_all(REQUEST)
            answer = await read_answer(stream, check_close=False)
            assert (answer.status, answer.body) == (200, b"ok")
    assert len(server_sends.sent) == 2, server_sends.sent  # HEAD's head, POST's answer


async def test_an_app_failing_after_a_marked_head_gets_the_connection_closed() -> None:
    """The head was held for a body that never came: the client still sees the head it
    was sent (as without the mark) and then the close, never a connection left hanging."""
    for mark in (False, True):
        async with edge(answering(mark=mark, fail_after_head=True)) as server:
            stream = await trio.open_tcp_stream(*split_url(server.url))
            async with stream:
                await stream.send_all(REQUEST)
                data = b""
                with trio.fail_after(10):
                    while chunk := await stream.receive_some(4096):
                        data += chunk
        assert data.startswith(b"HTTP/1.1 200"), (mark, data)
        assert data.endswith(b"\r\n\r\n"), (mark, data)  # no body: the app never sent it


async def test_a_read_waiting_longer_than_read_timeout_ends_the_connection() -> None:
    """Half a request head, then nothing: the keep-alive deadline (30 s) is far, so only
    the read's own bound (1 s) can end it."""
    for bound, closed in ((1, True), (None, False)):
        async with edge(answering(mark=True), read_timeout=bound) as server:
            stream = await trio.open_tcp_stream(*split_url(server.url))
            async with stream:
                await stream.send_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                # Without the bound the same connection stays open (checked for 3 s).
                assert await closes(stream, timeout=10 if closed else 3) == closed, bound
