"""A minimal HTTP/1.1 keep-alive client on trio streams (TLS for ``https://``).

It does what the emulator and the load generator need: send one request, read one
response (Content-Length, chunked, or until close), reconnect when the server closed the
connection. It costs a fraction of httpx's CPU per request, which matters on a
two-core machine where the sender shares the CPU with the receiver under test.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

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
        extra = default_headers or {}
        head = [f"Host: {self._host_header}", *(f"{k}: {v}" for k, v in extra.items())]
        self._post_head = (f"POST {target.path} HTTP/1.1\r\n" + "\r\n".join(head) + "\r\n").encode()
        self._ssl = ssl_context
        self._stream: trio.abc.Stream | None = None
        self._buf = bytearray()
        self.connects = 0

    async def aclose(self) -> None:
        """Close the socket, if open."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await trio.aclose_forcefully(stream)
        self._buf.clear()

    async def post(self, body: bytes) -> Response:
        """POST ``body`` to the target's path with the default headers."""
        return await self._exchange(
            self._post_head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )

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
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return await self._exchange(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))

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

    async def _exchange(self, data: bytes) -> Response:
        try:
            if self._stream is None:
                self._stream = await self._open()
            await self._stream.send_all(data)
            response, close = await self._read_response(self._stream)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise HttpError(f"connection to {self.target.origin} failed: {exc!r}") from exc
        except BaseException:
            # HttpError, and cancellation (a timeout) in the middle of a response: the
            # stream is mid-message, so it cannot be reused.
            await self.aclose()
            raise
        if close:
            await self.aclose()
        return response

    async def _fill(self, stream: trio.abc.Stream) -> bool:
        data = await stream.receive_some(_RECV)
        if not data:
            return False
        self._buf += data
        return True

    async def _need(self, stream: trio.abc.Stream) -> None:
        if not await self._fill(stream):
            raise HttpError("server closed the connection mid-response")

    async def _read_response(self, stream: trio.abc.Stream) -> tuple[Response, bool]:
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > _MAX_HEAD:
                raise HttpError("response head too large")
            await self._need(stream)
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        try:
            version, code = lines[0].split(" ", 2)[:2]
            status = int(code)
        except ValueError as exc:
            raise HttpError(f"bad status line {lines[0]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(stream)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError as exc:
                raise HttpError(f"bad Content-Length {headers['content-length']!r}") from exc
            if not 0 <= length <= _MAX_BODY:
                raise HttpError(f"response body of {length} bytes refused")
            while len(buf) < length:
                await self._need(stream)
            body = bytes(buf[:length])
            del buf[:length]
        else:  # no length: the body ends when the server closes
            while len(buf) <= _MAX_BODY and await self._fill(stream):
                pass
            body, close = bytes(buf), True
            buf.clear()
        return Response(status, headers, body), close

    async def _read_chunked(self, stream: trio.abc.Stream) -> bytes:
        buf = self._buf
        out = bytearray()
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                await self._need(stream)
            try:
                size = int(bytes(buf[:eol]).split(b";")[0], 16)
            except ValueError as exc:
                raise HttpError("bad chunk size") from exc
            del buf[: eol + 2]
            if size == 0:
                # Skip trailers up to the blank line.
                while (eol := buf.find(b"\r\n")) != 0:
                    if eol > 0:
                        del buf[: eol + 2]
                    else:
                        await self._need(stream)
                del buf[:2]
                return bytes(out)
            if len(out) + size > _MAX_BODY:
                raise HttpError("response body too large")
            while len(buf) < size + 2:
                await self._need(stream)
            out += buf[:size]
            del buf[: size + 2]
