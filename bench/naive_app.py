"""A naive Python receiver: what one writes in an afternoon, as a peer for the benchmark.

    python -m bench.naive_app --listen 127.0.0.1:0 --log FILE

An ASGI app under hypercorn that parses each body with the standard library's ``json``,
appends one line per event (``json.dumps``) to a file, and answers 200. No auth, no
dedup, no fsync: acknowledged means "handed to the page cache", at best. Prints
``streamd ready: URL`` like streamd; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Sequence
from typing import IO, Any, Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

_OK: Final = b'{"ok": true}'
_HEADERS: Final = [(b"content-type", b"application/json"), (b"content-length", b"12")]


class NaiveApp:
    """Parse, append one line per event, answer 200 (400 for a body that is not JSON)."""

    def __init__(self, log: IO[str]) -> None:
        self.log = log

    # Plain dicts in and out: hypercorn's TypedDict unions add nothing to a 40-line app.
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            doc: Any = json.loads(b"".join(chunks))
        except ValueError:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        events = doc.get("activities", [doc]) if isinstance(doc, dict) else doc
        self.log.write("".join(json.dumps(event) + "\n" for event in events))
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": _OK})


async def _main(listen: str, log: IO[str]) -> None:
    config = Config()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "WARNING"

    async def until_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return

    async with trio.open_nursery() as nursery:
        app: Any = NaiveApp(log)
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=until_signal, task_status=task_status
            )
        )
        for bind in binds:
            print(f"streamd ready: {bind}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.naive_app", description=__doc__)
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any free)")
    ap.add_argument("--log", required=True, help="file to append one JSON line per event to")
    args = ap.parse_args(argv)
    with open(args.log, "a") as log:
        trio.run(_main, args.listen, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
