"""A minimal HTTP/1.1 receiver for the http sink benchmark: answers every POST 200.

    python -m bench.sink_receiver --listen 127.0.0.1:0

Raw trio sockets (no framework), so the receiver costs as little CPU as possible and
the figure describes the sink. Prints ``streamd ready: http://HOST:PORT`` once
listening (the bench's ready line), and on SIGTERM one JSON line: requests and
bytes received. Keep-alive; Content-Length bodies only (what httpx sends).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from functools import partial

import orjson
import trio

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class Counts:
    requests = 0
    body_bytes = 0


async def _serve_one(stream: trio.SocketStream, counts: Counts) -> None:
    buffer = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = await stream.receive_some(262_144)
                if not chunk:
                    return
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                chunk = await stream.receive_some(262_144)
                if not chunk:
                    return
                buffer += chunk
            buffer = buffer[length:]
            counts.requests += 1
            counts.body_bytes += length
            await stream.send_all(_OK)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def _main(host: str, port: int) -> None:
    counts = Counts()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(_serve_one, counts=counts), port, host=host)
        )
        sock = listeners[0].socket
        bound_host, bound_port = sock.getsockname()[:2]
        print(f"streamd ready: http://{bound_host}:{bound_port}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        print(orjson.dumps({"requests": counts.requests, "body_bytes": counts.body_bytes}).decode(),
              flush=True)  # fmt: skip
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sink_receiver")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    trio.run(_main, host, int(port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
