"""CPU a hypercorn trio server spends per small keep-alive POST, two or more copies of
hypercorn compared in one run (alternating, medians).

    python measure.py --variant released= --variant patched=/path/with/patched/copy

Each ``--variant NAME=DIR`` puts ``DIR`` first on ``PYTHONPATH`` of the server process
(empty: the installed hypercorn). Each round starts one server per variant, in turn, in
its own process: a raw ASGI app that reads the whole body and answers 200 with a short
JSON body, no access log (hypercorn's own cost is all that is measured). The client
(this process) posts ``--warmup`` requests, then ``--requests`` more over
``--concurrency`` keep-alive connections; the server's user + system CPU over the timed
requests comes from ``/proc/PID/stat`` (Linux). The client's own CPU per request is a
fixed amount of work: when it moves, the machine's speed moved.

Needs only hypercorn and trio. Prints one JSON line per server run, then the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

_TICK = os.sysconf("SC_CLK_TCK")
_REPLY = b'{"accepted": 0, "duplicates": 0}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"32")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _REPLY})


async def _serve() -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        import hypercorn

        print(binds[0], hypercorn.__file__, flush=True)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _request(body: bytes) -> bytes:
    head = (
        "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer x\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(stream: trio.SocketStream, request: bytes, buf: bytearray) -> None:
    await stream.send_all(request)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(buf) >= end + 4 + length:
                if not head.startswith(b"http/1.1 200"):
                    raise RuntimeError(head.decode(errors="replace"))
                del buf[: end + 4 + length]
                return
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk


async def _drive(host: str, port: int, count: int, concurrency: int, request: bytes) -> None:
    left = [count]

    async def one() -> None:
        stream = await trio.open_tcp_stream(host, port)
        buf = bytearray()
        async with stream:
            while left[0] > 0:
                left[0] -= 1
                await _exchange(stream, request, buf)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(one)


def _one_run(name: str, path: str, a: argparse.Namespace, request: bytes) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url, module = proc.stdout.readline().split()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        trio.run(_drive, host, int(port), a.warmup, a.concurrency, request)
        cpu0, client0, t0 = _cpu_s(proc.pid), _client_cpu_s(), time.monotonic()
        trio.run(_drive, host, int(port), a.requests, a.concurrency, request)
        cpu1, client1, t1 = _cpu_s(proc.pid), _client_cpu_s(), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    client, server = client1 - client0, cpu1 - cpu0
    return {
        "variant": name,
        "hypercorn": module,
        "requests": a.requests,
        "server_cpu_s": round(server, 3),
        "server_us_per_request": round(1e6 * server / a.requests, 1),
        "client_us_per_request": round(1e6 * client / a.requests, 1),
        "server_over_client": round(server / client, 3),
        "requests_per_s": round(a.requests / (t1 - t0), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=[], help="NAME=DIR (DIR may be empty)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--body", type=int, default=15_000, help="request body bytes")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        trio.run(_serve)
        return
    variants = [v.split("=", 1) for v in a.variant or ["released="]]
    request = _request(b'{"events": "' + b"x" * max(0, a.body - 14) + b'"}')
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    for _ in range(a.rounds):
        for name, path in variants:
            run = _one_run(name, path, a, request)
            runs[name].append(run)
            print(json.dumps(run), flush=True)
    summary = {
        name: {
            "server_us_per_request": statistics.median(r["server_us_per_request"] for r in rs),
            "server_over_client": statistics.median(r["server_over_client"] for r in rs),
        }
        for name, rs in runs.items()
    }
    print(json.dumps({"medians": summary}))


if __name__ == "__main__":
    main()
