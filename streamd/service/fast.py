"""Plain small HTTP/1.1 requests answered without hypercorn's per-request machinery.

For every request hypercorn's HTTP/1.1 protocol runs h11's parser and serialiser and its
own ASGI stream (``HTTPStream``): event objects, a scope, the checks on what the app
sends, and a pass through the connection's send path for the head, the body and the
end. For a small delivery that is about as much CPU as the app itself
(ARCHITECTURE.md, "CPU per small delivery").

:class:`FastH11` (used for an app marked ``RUNS_INLINE``, as :class:`InlineH11` was)
recognises a *plain* request whole in the bytes just read and answers it itself:

- the request line and each header line must match h11's own grammar (``h11._abnf``);
  ``GET`` or ``POST``, an origin-form target, ``HTTP/1.1``, exactly one ``Host``, at
  most one ``Content-Length`` (digits only), no ``Transfer-Encoding``, ``Expect`` or
  ``Upgrade``, ``Connection`` absent or ``keep-alive``, a head within
  ``h11_max_incomplete_size``, and the whole body already read;
- the app gets the scope and the messages hypercorn would give it, through the same
  wrappers (hypercorn's ``_handle``: its exceptions logged, ``send(None)`` at the end);
- an answer with a ``Content-Length`` that matches its body, a status from 200 to 999
  other than 204 and 304, no ``Connection`` or ``Transfer-Encoding`` and h11-valid
  header names and values is written as h11 writes it (``HTTP/1.1 200 \\r\\n``, the
  app's headers, then hypercorn's ``date``), in one write.

Anything else goes hypercorn's way, byte for byte as before:

- a request that is not plain (or not all there yet) is handed to :class:`InlineH11`
  with every byte from its first on; the connection comes back here once h11 is idle
  with nothing buffered;
- an answer that is not plain (a 500 for an app that failed before answering, an
  answer that closes the connection, a missing length, the last request hypercorn
  allows on a connection) is *replayed*: h11 is given the request's bytes, a
  hypercorn ``HTTPStream`` is made for it, and the app's messages so far are passed
  to it in order, so h11 and hypercorn frame, check and write them.

One difference a marked app can see: the answer is written when its last body message
is sent (hypercorn writes the head at ``http.response.start``; a marked app sends its
body right after it, ``BODY_FOLLOWS``), and an error in the head (a bad header value)
is raised from that last send instead of the first. ``tests/hostile/test_inline.py``
sends the same byte sequences to a marked and an unmarked app and requires the same
bytes back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple
from urllib.parse import unquote

import h11
import trio
from h11._abnf import field_name, field_value, header_field, request_line
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.events import Request
from hypercorn.protocol.h11 import STREAM_ID
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.task_group import _handle
from hypercorn.utils import UnexpectedMessageError, build_and_validate_headers

from streamd.service.inline import InlineH11, _Deferred

log = logging.getLogger("streamd.http")
_REQUEST_LINE: Final = re.compile(request_line.encode("ascii"))
_HEADER_LINE: Final = re.compile(header_field.encode("ascii"))
_FIELD_NAME: Final = re.compile(field_name.encode("ascii"))
_FIELD_VALUE: Final = re.compile(field_value.encode("ascii"))
_LENGTH: Final = re.compile(rb"[0-9]{1,15}")
_METHODS: Final = frozenset({b"GET", b"POST"})
# Request headers that make h11 or hypercorn treat a request specially.
_SPECIAL: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
# Answer headers h11 adds to or acts on.
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host"})


class Plain(NamedTuple):
    """A plain request, whole in the buffer (see the module's docstring)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lowercased, values without OWS (as h11)
    body: bytes
    end: int  # where the next request starts in the buffer


def plain_request(data: bytes, at: int, head_limit: int) -> Plain | None:
    """The plain request at offset ``at`` of ``data``, or None (not plain, or not all
    read). Offsets, not slices: a buffer of pipelined requests is not copied once per
    request."""
    end = data.find(b"\r\n\r\n", at, at + head_limit + 4)
    if end < 0:
        return None
    lines = data[at:end].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None or line["http_version"] != b"1.1":
        return None
    method, target = line["method"], line["target"]
    if method not in _METHODS or target[:1] != b"/":
        return None
    headers = []
    length = -1
    hosts = 0
    for raw in lines[1:]:
        field = _HEADER_LINE.fullmatch(raw)
        if field is None:
            return None
        name, value = field["field_name"].lower(), field["field_value"]
        if name == b"content-length":
            if length >= 0 or _LENGTH.fullmatch(value) is None:
                return None
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name in _SPECIAL or (name == b"connection" and value.lower() != b"keep-alive"):
            return None
        headers.append((name, value))
    start = end + 4
    stop = start + max(length, 0)
    if hosts != 1 or len(data) < stop:
        return None
    return Plain(method, target, headers, data[start:stop], stop)


class _Body:
    """The app's ``receive``: the body as hypercorn hands it (a chunk with ``more_body``,
    then an empty last message), then ``http.disconnect``. Never waits."""

    __slots__ = ("_messages",)

    def __init__(self, body: bytes) -> None:
        self._messages: list[Mapping[str, Any]] = [
            {"type": "http.request", "body": b"", "more_body": False}
        ]
        if body:
            self._messages.append({"type": "http.request", "body": body, "more_body": True})

    def receive_nowait(self) -> Mapping[str, Any]:
        """How ``streamd.ingest.admission.receive_now`` takes the body without a
        checkpoint."""
        return self._messages.pop() if self._messages else {"type": "http.disconnect"}

    async def receive(self) -> Mapping[str, Any]:
        return self.receive_nowait()


class _Answer:
    """The app's ``send`` for one plain request: a plain answer is written in one piece,
    anything else replayed through h11 and hypercorn (see the module's docstring)."""

    __slots__ = (
        "_headers",
        "_messages",
        "_owner",
        "_request",
        "_stream",
        "aborted",
        "closed",
        "status",
    )

    def __init__(self, owner: FastH11, request: Plain, raw: bytes) -> None:
        self._owner = owner
        self._request = (request, raw)
        self._messages: list[Mapping[str, Any]] = []
        self._stream: HTTPStream | None = None  # once replayed
        self._headers: list[tuple[bytes, bytes]] = []
        self.status = 0  # 0 until http.response.start
        self.closed = False  # the plain answer is written
        self.aborted = False  # h11 could not replay the request: the connection closed

    async def send(self, message: Mapping[str, Any] | None) -> None:
        if self._stream is not None:
            await self._stream.app_send(message)  # type: ignore[arg-type]
            return
        if self.aborted:
            return
        if message is None:
            if not self.closed:  # no answer, or an unfinished one: hypercorn's way
                await self._replay()
                if self._stream is not None:
                    await self._stream.app_send(None)
            return
        kind = message["type"]
        if kind == "http.response.start" and not self.status and not self.closed:
            # Raises where hypercorn's stream would (a pseudo-header, a header not bytes).
            self._headers = build_and_validate_headers(message.get("headers", []))
            self.status = int(message["status"])
            self._messages.append(message)
        elif kind == "http.response.body" and self.status and not self.closed:
            self._messages.append(message)
            if not message.get("more_body", False):
                data = self._plain()
                if data is None:
                    await self._replay()
                else:
                    await self._write(data)
        elif self.closed:
            raise UnexpectedMessageError(ASGIHTTPState.CLOSED, kind)
        else:  # what hypercorn's stream raises or ignores, it raises or ignores
            self._messages.append(message)
            await self._replay()

    def _plain(self) -> bytes | None:
        """The answer's bytes as h11 would write them, or None when h11 and hypercorn
        must frame it themselves."""
        start = self._messages[0]
        owner = self._owner
        status = self.status
        if (
            not 200 <= status < 1000
            or status in (204, 304)
            or start.get("trailers", False)
            or owner.keep_alive_requests >= owner.config.keep_alive_max_requests
        ):
            return None
        body = b"".join(bytes(m.get("body", b"")) for m in self._messages[1:])
        head = [b"HTTP/1.1 %d \r\n" % status]
        length = b""
        for name, value in self._headers:
            lower = name.lower()
            if lower in _FRAMING:
                if lower != b"content-length" or length:
                    return None
                length = value
            if _FIELD_NAME.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
                return None
            head.append(b"%s: %s\r\n" % (name, value))
        if length != b"%d" % len(body):
            return None
        for name, value in owner.config.response_headers("h11"):
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"\r\n")
        head.append(body)
        return b"".join(head)

    async def _write(self, data: bytes) -> None:
        """Write the answer, then what hypercorn does once a response ends."""
        self.closed = True
        owner = self._owner
        await owner.edge.send_whole(data)
        if owner.context.terminated.is_set():
            await owner.send(Closed())
        else:
            await owner.send(Updated(idle=True))

    async def _replay(self) -> None:
        """h11 reads the request; hypercorn's stream gets the app's messages so far."""
        owner = self._owner
        request, raw = self._request
        connection = owner.connection
        connection.receive_data(raw)
        try:
            # The request, its body, its end: plain, so h11 reads them as we did.
            for _ in range(3):
                if isinstance(connection.next_event(), h11.EndOfMessage):
                    break
            else:
                raise h11.RemoteProtocolError("no end of the request")
        except h11.RemoteProtocolError as exc:
            # Cannot happen (tests/unit/test_fast_plain.py checks that h11 reads every
            # plain request as plain_request does). Were it to, this connection closes
            # unanswered, as for a client that went away, and nothing else is touched.
            log.error("h11 read a plain request differently (%s); closing the connection", exc)
            self.closed = self.aborted = True
            await owner.send(Closed())
            return
        stream = HTTPStream(
            owner.app,
            owner.config,
            owner.context,
            _Deferred(),  # type: ignore[arg-type]  # only its spawn_app is used
            owner.ssl,
            owner.client,
            owner.server,
            owner.stream_send,
            STREAM_ID,
        )
        owner.stream = self._stream = stream
        await stream.handle(
            Request(
                stream_id=STREAM_ID,
                headers=request.headers,
                http_version="1.1",
                method=request.method.decode("ascii"),
                raw_path=request.target,
                state=owner.connection_state,
            )
        )
        for message in self._messages:
            await stream.app_send(message)  # type: ignore[arg-type]


class FastH11(InlineH11):
    """:class:`InlineH11` that answers plain requests itself (see the module's
    docstring). ``edge`` is the connection (streamd's ``_Connection``)."""

    edge: Any
    _fast = True  # h11 is idle with nothing buffered: bytes are read here first

    async def handle(self, event: Any) -> None:
        if self._fast and type(event) is RawData and event.data:
            data = event.data
            limit = self.config.h11_max_incomplete_size
            at = 0
            while at < len(data):
                request = plain_request(data, at, limit)
                if request is None:
                    break
                raw, at = data[at : request.end], request.end
                if not await self._answer(request, raw):
                    return  # the connection closes: what follows is not read
            else:
                return
            self._fast = False
            event = RawData(data[at:])
        await super().handle(event)

    async def _maybe_recycle(self) -> None:
        await super()._maybe_recycle()
        connection = self.connection
        if (
            connection.our_state is h11.IDLE
            and connection.their_state is h11.IDLE
            and connection.trailing_data == (b"", False)
        ):
            self._fast = True

    async def _answer(self, request: Plain, raw: bytes) -> bool:
        """Answer one plain request; False when the connection is closing."""
        await self.send(Updated(idle=False))
        path, _, query = request.target.partition(b"?")
        scope: Any = {
            "type": "http",
            "http_version": "1.1",
            "asgi": {"spec_version": "2.1", "version": "3.0"},
            "method": request.method.decode("ascii"),
            "scheme": "https" if self.ssl else "http",
            "path": unquote(path.decode("ascii")),
            "raw_path": path,
            "query_string": query,
            "root_path": self.config.root_path,
            "headers": request.headers,
            "client": self.client,
            "server": self.server,
            "state": self.connection_state.copy(),
            "extensions": {},
        }
        self.keep_alive_requests += 1
        await self.context.mark_request()
        answer = _Answer(self, request, raw)
        body: Any = _Body(request.body)
        await _handle(
            self.app,
            self.config,
            scope,
            body.receive,
            answer.send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        if answer.aborted:
            return False
        if answer.closed:
            return not self.context.terminated.is_set()
        # Replayed: hypercorn recycled the connection, or is closing it.
        return self.connection.our_state is h11.IDLE and self.connection.their_state is h11.IDLE


def eligible(config: Any) -> bool:
    """Whether :class:`FastH11` gives the same answers as hypercorn under ``config``
    (no server names to check, headers passed lowercased, no access log)."""
    return (
        not config.server_names
        and not config.h11_pass_raw_headers
        and config.log.access_logger is None
    )
