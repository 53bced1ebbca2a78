"""The hypercorn ceiling: a raw ASGI app that reads each body and acknowledges nothing.

    python -m bench.baseline_app --listen 127.0.0.1:0

It answers every request like streamd answers a committed batch of duplicates
(200 ``{"accepted": 0, "duplicates": 0}``) after reading the whole body, with no parsing,
no auth and no journal: whatever streamd loses against it is streamd's own cost. Prints
``streamd ready: http://HOST:PORT`` once bound, like ``streamd serve``; SIGTERM or
SIGINT stops it gracefully.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from typing import Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

_BODY: Final = b'{"accepted": 0, "duplicates": 0}'
_HEADERS: Final = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
]


async def read_whole(receive: ASGIReceiveCallable) -> bool:
    """Read a request's body to its end, discarding it; False when the client left."""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        more = message["type"] == "http.request" and message.get("more_body", False)
    return True


async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """The ASGI application: lifespan no-ops, HTTP requests read fully and answered 200."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http" or not await read_whole(receive):
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY, "more_body": False})


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def serve_baseline(
    listen: str, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on ``listen`` until SIGTERM/SIGINT; reports the binds when ready."""
    config = Config()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "WARNING"
    await serve(app, config, shutdown_trigger=_until_signal, task_status=task_status)


async def _main(listen: str) -> None:
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_baseline, listen)
        for bind in binds:
            print(f"streamd ready: {bind}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.baseline_app", description=__doc__)
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any free)")
    args = ap.parse_args(argv)
    trio.run(_main, args.listen)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
