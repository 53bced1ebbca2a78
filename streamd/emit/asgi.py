"""Serve a tiny request handler over HTTP on loopback: the key server, the journal API.

hypercorn (already streamd's server) runs the app in the caller's nursery; the handler
is a plain async function of the request, so each server stays a few lines.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from streamd.asgi import ClientGone, lifespan, read_body

_MAX_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler sees: method, path, decoded query, lower-cased headers, body."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    raw_query: str = ""


@dataclass(slots=True)
class Reply:
    """What a handler answers."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Reply]]


class HandlerApp:
    """An ASGI app that reads each request whole and hands it to ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        send: Callable[[Mapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            body = await read_body(receive, _MAX_BODY)
        except ClientGone:
            return
        if body is None:
            reply = Reply(413, b"body too large")
        else:
            raw_query = scope.get("query_string", b"").decode("latin-1")
            request = Request(
                method=scope["method"],
                path=scope["path"],
                query=dict(parse_qsl(raw_query, keep_blank_values=True)),
                headers={
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                },
                body=body,
                raw_query=raw_query,
            )
            reply = await self.handler(request)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        if reply.status not in (204, 304):
            headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})


async def serve_handler(
    handler: Handler,
    listen: str,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``listen`` (``host:port``) until cancelled; reports the binds.

    With ``certfile`` and ``keyfile`` it serves HTTPS.
    """
    config = Config()
    config.bind = [listen]
    if certfile is not None:
        config.certfile, config.keyfile = certfile, keyfile
    config.accesslog = None
    errorlog = logging.getLogger("streamd.emit.http")
    errorlog.setLevel(logging.WARNING)  # not hypercorn's "Running on ..." for each helper server
    config.errorlog = errorlog
    config.loglevel = "WARNING"
    app: Any = HandlerApp(handler)  # an ASGI 3 callable; hypercorn's union type is narrower
    await serve(app, config, shutdown_trigger=trio.sleep_forever, task_status=task_status)
