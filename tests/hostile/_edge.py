"""``serve_http`` (streamd's edge: real hypercorn, real loopback) around one ASGI app,
for the tests that watch how the edge reads and answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from streamd.service.http import ConnectionTable, bind_sockets, serve_http

from ._wire import split_url

# hypercorn's task for each request's app (hypercorn.trio.task_group._handle).
APP_TASK = "hypercorn.trio.task_group._handle"

App = Callable[
    [
        Mapping[str, Any],
        Callable[[], Awaitable[Mapping[str, Any]]],
        Callable[[Mapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


@dataclass
class Edge:
    url: str
    port: int


@asynccontextmanager
async def edge(app: App, *, read_timeout: int | None = None) -> AsyncIterator[Edge]:
    hconfig = HypercornConfig()
    hconfig.bind = ["127.0.0.1:0"]
    hconfig.accesslog = None
    hconfig.errorlog = None
    hconfig.keep_alive_timeout = 30
    hconfig.read_timeout = read_timeout
    hconfig.graceful_timeout = 10
    sockets = bind_sockets(hconfig, "the test listener")
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve_http(
                app,
                hconfig,
                sockets,
                ConnectionTable(64),
                shutdown=stop.wait,
                task_status=task_status,
            )
        )
        yield Edge(binds[0], split_url(binds[0])[1])
        stop.set()


class Spawned(trio.abc.Instrument):
    """Counts the tasks started while installed, by name (``APP_TASK``: one per request
    that hypercorn's way serves)."""

    def __init__(self) -> None:
        self.names: Counter[str] = Counter()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names[task.name] += 1
