"""A minimal HTTP/1.1 keep-alive client on trio streams (TLS for ``https://``).

It does what the emulator and the load generator need: send one request, read one
response (Content-Length, chunked, or until close), reconnect when the server closed the
connection. The protocol is h11's (sans-IO: bytes in, events out; the same parser
hypercorn serves streamd with); this module is the thin trio shell around it. It costs
a fraction of httpx's CPU per request, which matters on a two-core machine where the
sender shares the CPU with the receiver under test.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

from streamd.emit.errors import EmitError

_RECV: Final = 65_536
_MAX_HEAD: Final = 65_536
_MAX_BODY: Final = 16 * 1024 * 1024


class HttpError(EmitError):
    """Raised when the connection fails or the server's answer is not valid HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: scheme, host, port and the request path (with query)."""

    host: str
    port: int
    path: str
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> Target:
        """Parse an ``http(s)://host[:port]/path`` URL; raise ``ValueError`` for anything else."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}") from exc
        tls = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port or (443 if tls else 80), path, tls)

    @property
    def origin(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def with_query(self, extra: str) -> str:
        """The path with ``extra`` (``name=value``) appended to its query."""
        return self.path + ("&" if "?" in self.path else "?") + extra


@dataclass(frozen=True, slots=True)
class Response:
    """One parsed response: status, lower-cased headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive connection to ``target``; opened lazily, reopened after a close.

    ``default_headers`` go with every request made by :meth:`post`.
    """

    def __init__(
        self,
        target: Target,
        default_headers: dict[str, str] | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = target
        self._host_header = f"{target.host}:{target.port}"
        self._post_headers = [("Host", self._host_header), *(default_headers or {}).items()]
        self._ssl = ssl_context
        self._stream: trio.abc.Stream | None = None
        self._h11: h11.Connection | None = None
        self.connects = 0

    async def aclose(self) -> None:
        """Close the socket, if open."""
        self._h11 = None
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await trio.aclose_forcefully(stream)

    async def post(self, body: bytes) -> Response:
        """POST ``body`` to the target's path with the default headers."""
        headers = [*self._post_headers, ("Content-Length", str(len(body)))]
        return await self._exchange("POST", self.target.path, headers, body)

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Response:
        """Send one request and return its response; raise :class:`HttpError` on failure.

        After an error the connection is closed; the next call opens a new one.
        """
        sent = [("Host", self._host_header), *headers]
        if body is not None:
            sent.append(("Content-Length", str(len(body))))
        return await self._exchange(method, path, sent, body)

    async def _open(self) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(self.target.host, self.target.port)
        self.connects += 1
        if not self.target.tls:
            return tcp
        context = self._ssl or ssl.create_default_context()
        stream = trio.SSLStream(tcp, context, server_hostname=self.target.host)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)  # a refused certificate must not leak the socket
            raise
        return stream

    async def _exchange(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Response:
        try:
            if self._stream is None or self._h11 is None:
                self._stream = await self._open()
                self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
            protocol, stream = self._h11, self._stream
            data = _request_bytes(protocol, method, path, headers, body)
            await stream.send_all(data)
            response = await _read_response(protocol, stream, self.target.origin)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise HttpError(f"connection to {self.target.origin} failed: {exc!r}") from exc
        except BaseException:
            # HttpError, and cancellation (a timeout) in the middle of a response: the
            # stream is mid-message, so it cannot be reused.
            await self.aclose()
            raise
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()  # kept alive: the next request reuses the socket
        else:  # Connection: close, HTTP/1.0, a body that ended with the connection
            await self.aclose()
        return response


def _request_bytes(
    protocol: h11.Connection,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
) -> bytes:
    """The request's bytes, from h11 (which then expects its response)."""
    try:
        data = protocol.send(h11.Request(method=method, target=path, headers=headers))
        if body:
            data += protocol.send(h11.Data(data=body))
        data += protocol.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:  # a header value with a newline, say
        raise HttpError(f"cannot send this request: {exc}") from None
    return data


async def _read_response(
    protocol: h11.Connection, stream: trio.abc.Stream, origin: str
) -> Response:
    """Feed the stream to h11 until the response ended; raise :class:`HttpError`."""
    status = 0
    headers: dict[str, str] = {}
    body = bytearray()
    closed = False
    while True:
        try:
            event = protocol.next_event()
        except h11.RemoteProtocolError as exc:
            raise _malformed(exc, origin, closed=closed) from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECV)
            closed = not data
            # b"": the server closed its side. (A bytearray from TLS is fine: h11 appends it.)
            protocol.receive_data(data)  # type: ignore[arg-type]
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            length = headers.get("content-length")
            if length is not None and int(length) > _MAX_BODY:  # h11 checked it is digits
                raise HttpError(f"response body of {int(length)} bytes refused")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise HttpError("response body too large")
        elif isinstance(event, h11.EndOfMessage):
            return Response(status, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("server closed the connection mid-response")
        # InformationalResponse (1xx): the final response follows.


# h11's words for what went wrong, in the terms this module always used.
_WHAT: Final = (
    ("illegal status line", "bad status line"),
    ("illegal chunk header", "bad chunk size"),
    ("Receive buffer too long", "response head too large"),
    ("bad Content-Length", "bad Content-Length"),
)


def _malformed(exc: h11.RemoteProtocolError, origin: str, *, closed: bool) -> HttpError:
    """The :class:`HttpError` for a response h11 could not parse."""
    if closed:
        return HttpError(f"server closed the connection mid-response ({exc})")
    text = str(exc)
    what = next((ours for theirs, ours in _WHAT if text.startswith(theirs)), "malformed response")
    return HttpError(f"{what} from {origin} ({text[:200]})")
