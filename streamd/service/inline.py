"""HTTP/1.1 requests whose whole body has been read: the app runs in the connection's task.

hypercorn starts every request's app as a task of its own and hands it the body
through a memory channel (each send a checkpoint: a pass through trio's scheduler),
while the connection's task goes back to reading, so that a client closing the
connection reaches the app as ``http.disconnect``. For a small delivery that is a task
started and joined, two channel sends and a parked read, per request.

An app marked ``RUNS_INLINE`` (streamd/asgi.py: it never waits for ``http.disconnect``;
the ingest app) does not need that read. When a request's body is already in h11's
buffer by the time its head is parsed (every small delivery: hypercorn reads 64 KiB at
a time), :class:`InlineH11` runs such an app in the connection's own task, with the
body waiting in an inbox. What the app is given and what it may send are unchanged: the
scope, the messages and their order, the checks on them (hypercorn's ``HTTPStream``),
the error handling (hypercorn's ``_handle``: an app failing before its answer gives a
500, after it a closed connection). A client that closes meanwhile is noticed once the
app has answered, as the next read. A request whose body is not all there yet (a large
body, a slow sender, ``Expect: 100-continue``, more than :data:`MAX_PIECES` chunks), an
``Upgrade`` request, or one h11 finds malformed part-way through its body goes
hypercorn's way, with what was already parsed handed on in order.

A plain request (streamd/service/fast.py) does not even get this far: :class:`FastH11`,
a subclass, answers it without hypercorn's stream and hands the rest here.

It uses hypercorn's internals (``H11Protocol``'s methods, ``HTTPStream``, ``_handle``):
pyproject.toml holds hypercorn to the minor version ``tests/hostile/test_inline.py``
compared it with.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio
from hypercorn.events import Closed, Updated
from hypercorn.protocol.events import Body, EndBody, Request
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.task_group import _handle

_WHOLE = object()  # the body ended within the buffer
# At most this many body chunks are taken ahead. A Content-Length body already read is
# one; a chunked one is one per chunk, and 64 KiB of one-byte chunks would otherwise
# be ~10,000 messages held at once, where hypercorn's channel holds 10.
MAX_PIECES = 16


class _Inbox:
    """The app's ``receive``: the body's messages, then whatever the stream adds later
    (``http.disconnect`` once the answer is written or the connection closes)."""

    __slots__ = ("_lot", "_messages")

    def __init__(self) -> None:
        self._messages: deque[Any] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    async def put(self, message: Any) -> None:
        self._messages.append(message)
        self._lot.unpark_all()

    async def receive(self) -> Any:
        while not self._messages:
            await self._lot.park()
        return self._messages.popleft()

    def receive_nowait(self) -> Any:
        """A message already here, or ``trio.WouldBlock`` (as a memory channel's): how
        ``streamd.ingest.admission.receive_now`` takes the body without a checkpoint."""
        if not self._messages:
            raise trio.WouldBlock
        return self._messages.popleft()


class _Deferred:
    """Stands in for hypercorn's task group in one ``HTTPStream``: ``spawn_app`` keeps
    the app to be run in the connection's task instead of starting it."""

    __slots__ = ("call", "inbox")

    def __init__(self) -> None:
        self.inbox = _Inbox()
        self.call: tuple[Any, Any, Any, Callable[[Any], Awaitable[None]]] | None = None

    async def spawn_app(
        self, app: Any, config: Any, scope: Any, send: Callable[[Any], Awaitable[None]]
    ) -> Callable[[Any], Awaitable[None]]:
        self.call = (app, config, scope, send)
        return self.inbox.put


class InlineH11(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, running the app in the connection's task when a
    request's body is already in the buffer (see the module's docstring)."""

    async def _handle_events(self) -> None:
        pending: Any = None  # an event (or h11's error) taken ahead, not yet handled
        while True:
            if pending is None:
                if self.connection.they_are_waiting_for_100_continue:
                    await self._send_h11_event(
                        h11.InformationalResponse(
                            status_code=100, headers=self.config.response_headers("h11")
                        )
                    )
                try:
                    event: Any = self.connection.next_event()
                except h11.RemoteProtocolError as error:
                    event = error
            else:
                event, pending = pending, None
            if isinstance(event, h11.RemoteProtocolError):
                if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                    await self._send_error_response(event.error_status_hint)
                await self.send(Closed())
                break
            if isinstance(event, h11.Request):
                await self.send(Updated(idle=False))
                await self._check_protocol(event)
                if _upgrade(event) or self.connection.they_are_waiting_for_100_continue:
                    # hypercorn's way: the loop's top sends the 100 Continue at once.
                    await self._create_stream(event)
                    continue
                chunks, after = self._body_in_buffer()
                if after is _WHOLE:
                    await self._answer_inline(event, chunks)
                    continue
                await self._create_stream(event)
                assert self.stream is not None  # _create_stream made it
                for data in chunks:
                    await self.stream.handle(Body(stream_id=STREAM_ID, data=data))
                pending = after
            elif event is h11.PAUSED:
                await self.can_read.clear()
                await self.can_read.wait()
            elif (
                isinstance(event, h11.ConnectionClosed)
                or event is h11.NEED_DATA
                or self.stream is None
            ):
                break
            elif isinstance(event, h11.Data):
                await self.stream.handle(Body(stream_id=STREAM_ID, data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self.stream.handle(EndBody(stream_id=STREAM_ID))

    def _body_in_buffer(self) -> tuple[list[bytes], Any]:
        """The request's body chunks h11 can give now, and what ended them: ``_WHOLE``
        (the end of the body), or the next event or error, to be handled as usual.
        Stops at :data:`MAX_PIECES` chunks (then None: nothing taken ahead), and
        hypercorn's way takes the rest through its bounded channel."""
        chunks: list[bytes] = []
        while len(chunks) < MAX_PIECES:
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as error:
                return chunks, error
            if isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return chunks, _WHOLE
            else:
                return chunks, event
        return chunks, None  # more in the buffer: the loop goes on reading events

    async def _answer_inline(self, request: h11.Request, chunks: list[bytes]) -> None:
        """What ``_create_stream`` and the body's events do, with the app run here."""
        deferred = _Deferred()
        stream = HTTPStream(
            self.app,
            self.config,
            self.context,
            deferred,  # type: ignore[arg-type]  # only its spawn_app is used
            self.ssl,
            self.client,
            self.server,
            self.stream_send,
            STREAM_ID,
        )
        self.stream = stream
        if self.config.h11_pass_raw_headers:
            headers = request.headers.raw_items()
        else:
            headers = list(request.headers)
        await stream.handle(
            Request(
                stream_id=STREAM_ID,
                headers=headers,
                http_version=request.http_version.decode(),
                method=request.method.decode("ascii").upper(),
                raw_path=request.target,
                state=self.connection_state,
            )
        )
        self.keep_alive_requests += 1
        await self.context.mark_request()
        for data in chunks:
            await stream.handle(Body(stream_id=STREAM_ID, data=data))
        await stream.handle(EndBody(stream_id=STREAM_ID))
        if deferred.call is not None:  # None: refused before any app (a 404 for the host)
            app, config, scope, send = deferred.call
            await _handle(
                app,
                config,
                scope,
                deferred.inbox.receive,
                send,
                trio.to_thread.run_sync,
                trio.from_thread.run,
            )


def _upgrade(request: h11.Request) -> bool:
    """The request asks to switch protocols (a WebSocket, h2c): hypercorn's own path."""
    return any(name == b"upgrade" for name, _ in request.headers)
