"""A minimal HTTP/1.1 keep-alive client on trio streams, for the load generator.

It does only what the benchmark needs: POST a body, read one response (Content-Length or
chunked), reconnect when the server closes. It costs a fraction of httpx's CPU per request,
which matters on a two-core machine where the client shares the CPU with the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import trio

_RECV: Final = 65_536
_MAX_HEAD: Final = 65_536


class HttpError(Exception):
    """Raised when the connection fails or the server's answer is not valid HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: host, port and the request path (with query)."""

    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        """Parse an ``http://host:port/path`` URL; raise ``ValueError`` for anything else."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port/path URLs are supported, got {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or 80, path)


@dataclass(frozen=True, slots=True)
class Response:
    """One parsed response: status, lower-cased headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


class RawConnection:
    """One keep-alive connection; reconnects lazily after the server closed it."""

    def __init__(self, target: Target, extra_headers: dict[str, str]) -> None:
        self.target = target
        head = [f"Host: {target.host}:{target.port}"]
        head += [f"{k}: {v}" for k, v in extra_headers.items()]
        self._head = (f"POST {target.path} HTTP/1.1\r\n" + "\r\n".join(head) + "\r\n").encode()
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()
        self.connects = 0

    async def aclose(self) -> None:
        """Close the socket, if open."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()
        self._buf.clear()

    async def post(self, body: bytes) -> Response:
        """Send one POST and return its response; raise ``HttpError`` on failure.

        After an error the connection is closed; the next call opens a new one.
        """
        try:
            if self._stream is None:
                self._stream = await trio.open_tcp_stream(self.target.host, self.target.port)
                self.connects += 1
            await self._stream.send_all(
                self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            response, close = await self._read_response(self._stream)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise HttpError(f"connection failed: {exc!r}") from exc
        except HttpError:
            await self.aclose()
            raise
        if close:
            await self.aclose()
        return response

    async def _fill(self, stream: trio.SocketStream) -> None:
        data = await stream.receive_some(_RECV)
        if not data:
            raise HttpError("server closed the connection mid-response")
        self._buf += data

    async def _read_response(self, stream: trio.SocketStream) -> tuple[Response, bool]:
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > _MAX_HEAD:
                raise HttpError("response head too large")
            await self._fill(stream)
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
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(stream)
        else:
            length = int(headers.get("content-length", "0"))
            while len(buf) < length:
                await self._fill(stream)
            body = bytes(buf[:length])
            del buf[:length]
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        return Response(status, headers, body), close

    async def _read_chunked(self, stream: trio.SocketStream) -> bytes:
        buf = self._buf
        out = bytearray()
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                await self._fill(stream)
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            del buf[: eol + 2]
            if size == 0:
                # Skip trailers up to the blank line.
                while (eol := buf.find(b"\r\n")) != 0:
                    if eol > 0:
                        del buf[: eol + 2]
                    else:
                        await self._fill(stream)
                del buf[:2]
                return bytes(out)
            while len(buf) < size + 2:
                await self._fill(stream)
            out += buf[:size]
            del buf[: size + 2]
