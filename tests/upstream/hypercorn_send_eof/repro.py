"""Reproduce hypercorn 0.18.0's trio close race (and check the one-line fix).

A client sends request headers announcing a body, reads the early answer (here a 401
sent without reading the body) and closes at once. ``TCPServer._close`` then calls
``stream.send_eof()`` outside ``send_lock`` while the app's response may still be in
``send_all``; trio raises ``BusyResourceError`` into the app's ``send`` and hypercorn
logs "Error in ASGI Framework" with a traceback.

    python repro.py            # hypercorn as released: tracebacks in about half the tries
    python repro.py --fixed    # send_eof under send_lock: none

Needs only hypercorn and trio. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    # Refuse before reading the body (as any auth check does).
    await send(
        {"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"no"})


async def _fixed_close(self: TCPServer) -> None:
    async with self.send_lock:
        try:
            await self.stream.send_eof()
        except (
            trio.BrokenResourceError,
            AttributeError,
            trio.BusyResourceError,
            trio.ClosedResourceError,
        ):
            pass
    await self.stream.aclose()


class Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Error in ASGI Framework" in record.getMessage():
            self.errors += 1


async def main(tries: int) -> int:
    counter = Count()
    logging.getLogger("repro.error").addHandler(counter)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.errorlog = logging.getLogger("repro.error")
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        host, port = binds[0].removeprefix("http://").rsplit(":", 1)
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        for _ in range(tries):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(head)
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
            await stream.aclose()  # at once, without the body
            await trio.sleep(0.02)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    return counter.errors


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixed", action="store_true")
    ap.add_argument("--tries", type=int, default=200)
    a = ap.parse_args()
    if a.fixed:
        TCPServer._close = _fixed_close  # type: ignore[method-assign]
    errors = trio.run(main, a.tries)
    print(json.dumps({"fixed": a.fixed, "tries": a.tries, "tracebacks": errors}))
