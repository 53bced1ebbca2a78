"""Raw HTTP/1.1 on loopback for the hostile tests: what a well-behaved client library
would never send, and answers read byte by byte."""

from __future__ import annotations

from dataclasses import dataclass

import trio

# Signature headers that pass every check made before the body (their form): what a
# client without Adobe's key can send to a signed source.
SIGNATURE = {
    "x-adobe-digital-signature-1": "QUJDRA==",
    "x-adobe-public-key1-path": "/prod/keys/pub-key-slowloris.pem",
}


@dataclass
class Answer:
    """A response as read off the wire; ``closed`` when the server closed after it."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    closed: bool


def split_url(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def read_answer(
    stream: trio.abc.ReceiveStream, *, timeout: float = 10.0, check_close: bool = True
) -> Answer:
    """One response (Content-Length framed), and whether the connection then closed
    (``check_close``: wait up to 2 s to see; else ``closed`` is False)."""
    data = b""
    with trio.fail_after(timeout):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError(f"closed before a whole response head: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(body) < length:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            body += chunk
        closed = check_close and await closes(stream, timeout=2.0)
    return Answer(status, headers, body[:length], closed)


async def closes(stream: trio.abc.ReceiveStream, *, timeout: float) -> bool:
    """True when the peer closes within ``timeout`` (data meanwhile counts as open)."""
    with trio.move_on_after(timeout):
        try:
            return await stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True
    return False


async def exchange(url: str, request: bytes, *, timeout: float = 10.0) -> Answer:
    """Send ``request`` on a fresh connection and read one answer."""
    stream = await trio.open_tcp_stream(*split_url(url))
    async with stream:
        await stream.send_all(request)
        return await read_answer(stream, timeout=timeout)


def post_head(path: str, headers: dict[str, str], *, version: str = "1.1") -> bytes:
    lines = [
        f"POST {path} HTTP/{version}",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
