"""A real HTTP receiver for the sink tests: hypercorn on a loopback port, scripted answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b"ok"
    hang: bool = False  # never answer (until the client gives up)


@dataclass
class Request:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in orjson.loads(self.body)["events"]]


@dataclass
class Receiver:
    """Answers the n-th request with ``script(n)``; records every request."""

    script: Callable[[int], Answer] = lambda n: Answer()
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def confirmed_ids(self) -> list[str]:
        return [i for r, a in zip(self.requests, self.answers, strict=False) if a.status < 300
                for i in r.ids]  # fmt: skip

    answers: list[Answer] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        n = len(self.requests)
        answer = self.script(n)
        self.requests.append(Request(trio.current_time(), headers, body))
        self.answers.append(answer)
        if answer.hang:
            await trio.sleep_forever()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode(), v.encode()) for k, v in answer.headers],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})


@asynccontextmanager
async def running(receiver: Receiver) -> AsyncIterator[Receiver]:
    """Serve ``receiver`` on 127.0.0.1 (a free port) for the duration."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, receiver, config)
        receiver.url = binds[0] + "/hook"
        yield receiver
        nursery.cancel_scope.cancel()
