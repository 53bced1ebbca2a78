"""A minimal HTTP/1.1 receiver for the http sink benchmark: answers every POST 200.

    python -m bench.sink_receiver --listen 127.0.0.1:0

Raw trio sockets (no framework), so the receiver costs as little CPU as possible and
the figure describes the sink. Prints ``streamd ready: http://HOST:PORT`` once
listening (the bench's ready line), and on SIGTERM one JSON line: requests and
bytes received, and with ``--latency`` the percentiles of (receipt time - each
event's ``received_at``): streamd's receive-to-destination latency. With
``--arrivals FILE`` it also writes, at the end, each event id's first receipt time
(``time.time()``) as one JSON object, so the sender's request start can be joined in.
Keep-alive; Content-Length bodies only (what httpx sends).
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

import orjson
import trio

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class Counts:
    requests = 0
    body_bytes = 0
    latency = False
    latencies: list[float]
    arrivals: dict[str, float]

    def __init__(self) -> None:
        self.latencies = []
        self.arrivals = {}

    def record(self, body: bytes) -> None:
        """Per event: now - the event's ``received_at`` (streamd's receive time)."""
        now = time.time()
        arrivals = self.arrivals
        for event in orjson.loads(body)["events"]:
            received = datetime.strptime(event["received_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
            self.latencies.append(now - received.replace(tzinfo=UTC).timestamp())
            arrivals.setdefault(event["id"], now)


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
            body, buffer = buffer[:length], buffer[length:]
            if counts.latency:
                counts.record(body)
            counts.requests += 1
            counts.body_bytes += length
            await stream.send_all(_OK)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))] * 1000, 1)

    return {"p50_ms": rank(0.5), "p99_ms": rank(0.99), "max_ms": rank(1.0), "n": len(ordered)}


async def _main(host: str, port: int, latency: bool, arrivals: str | None) -> None:
    counts = Counts()
    counts.latency = latency or arrivals is not None
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
        summary = {
            "requests": counts.requests,
            "body_bytes": counts.body_bytes,
            "latency": _percentiles(counts.latencies),
        }
        if arrivals is not None:
            await trio.Path(arrivals).write_bytes(orjson.dumps(counts.arrivals))
        print(orjson.dumps(summary).decode(), flush=True)
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sink_receiver")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    ap.add_argument(
        "--latency", action="store_true", help="parse bodies; report receipt - received_at"
    )
    ap.add_argument("--arrivals", metavar="FILE", help="write {event id: receipt time} here")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    trio.run(_main, host, int(port), args.latency, args.arrivals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
