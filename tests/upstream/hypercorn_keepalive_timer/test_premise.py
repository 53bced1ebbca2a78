"""The premises of the proposal in this folder, checked against the installed hypercorn.

Each test fails once hypercorn has changed what the proposal is about: then streamd's
work-around in streamd/service/http.py (``_KeepAliveTimer``, the empty write skipped in
``_Connection.protocol_send``) is no longer needed and should go, and this folder with it.
"""

from __future__ import annotations

from collections import Counter
from importlib.metadata import version

import h11
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.events import Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import serve
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ConnectionState, Scope

REQUESTS = 10
BODY = b'{"id": "1"}'
REQUEST = (
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
FIXED = (
    f"hypercorn {version('hypercorn')} no longer does this: the proposal in "
    "tests/upstream/hypercorn_keepalive_timer is fixed upstream; remove streamd's "
    "work-around (streamd/service/http.py) and this folder"
)


async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message["type"] == "http.request" and message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"2")],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


class _Spawned(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: Counter[str] = Counter()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names[task.name] += 1


async def _answer(stream: trio.SocketStream) -> None:
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\r\n\r\nok"):
            chunk = await stream.receive_some(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data


async def test_hypercorn_starts_a_keep_alive_task_for_every_request() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    spawned = _Spawned()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        host, port = binds[0].removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(REQUEST)
            await _answer(stream)
            trio.lowlevel.add_instrument(spawned)
            try:
                for _ in range(REQUESTS):
                    await stream.send_all(REQUEST)
                    await _answer(stream)
            finally:
                trio.lowlevel.remove_instrument(spawned)
        nursery.cancel_scope.cancel()
    assert spawned.names["hypercorn.trio.task_group._handle"] == REQUESTS, spawned.names
    # TrioSingleTask.restart: one task (named after TCPServer._idle_timeout) per answer.
    timers = sum(n for name, n in spawned.names.items() if name.endswith("_idle_timeout"))
    assert timers >= REQUESTS, f"{FIXED} ({dict(spawned.names)})"


async def test_hypercorn_writes_the_empty_end_of_a_content_length_response() -> None:
    sent: list[Event] = []

    async def record(event: Event) -> None:
        sent.append(event)

    # Only the h11 connection and ``send`` are used on this path.
    protocol = H11Protocol(
        ASGIWrapper(app),
        Config(),
        WorkerContext(None),
        TaskGroup(),
        ConnectionState({}),
        False,
        None,
        None,
        record,
    )
    # A request read, so that h11 lets a response be sent.
    protocol.connection.receive_data(REQUEST)
    assert isinstance(protocol.connection.next_event(), h11.Request)
    await protocol._send_h11_event(
        h11.Response(status_code=200, headers=[(b"content-length", b"2")])
    )
    await protocol._send_h11_event(h11.Data(data=b"ok"))
    await protocol._send_h11_event(h11.EndOfMessage())
    writes = [event.data for event in sent if isinstance(event, RawData)]
    assert writes[1:] == [b"ok", b""], f"{FIXED} ({writes!r})"
