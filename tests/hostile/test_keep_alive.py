"""The keep-alive deadline at one task per connection (streamd/service/http.py,
``_KeepAliveTimer``), with hypercorn's meaning kept.

hypercorn 0.18 starts a task when a connection goes idle and cancels it when the next
request's headers are in: one task per request besides the app's, the largest of its own
costs on a small request (tests/upstream/hypercorn_keepalive_timer). streamd's edge runs
one timer task per connection and moves its deadline. These tests run the edge itself
(``serve_http``, real hypercorn, real loopback) with a small ASGI app.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig

from streamd.service.http import ConnectionTable, bind_sockets, serve_http

from ._edge import APP_TASK, Spawned
from ._wire import closes, post_head, read_answer, split_url

BODY = b'[{"id": "1"}]'
REQUEST = post_head("/", {"Content-Length": str(len(BODY))}) + BODY


@dataclass
class Edge:
    url: str
    table: ConnectionTable
    stop: trio.Event
    release: trio.Event  # the app answers once this is set
    arrived: list[int] = field(default_factory=lambda: [0])  # requests the app has seen


@asynccontextmanager
async def edge(
    keep_alive_timeout: float,
    *,
    hold: bool = False,
    until_disconnect: bool = False,
    inline: bool = False,
) -> AsyncIterator[Edge]:
    """``serve_http`` on a loopback port with an app that reads the body and answers 200
    (with ``hold``, only once ``release`` is set; with ``until_disconnect``, once
    hypercorn has told it the client is gone; with ``inline``, marked ``RUNS_INLINE``
    as the ingest app is); stopped on exit."""
    release = trio.Event()
    if not hold:
        release.set()
    arrived = [0]

    async def app(
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        send: Callable[[Mapping[str, Any]], Awaitable[None]],
    ) -> None:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        arrived[0] += 1
        if until_disconnect:
            assert (await receive())["type"] == "http.disconnect"
        await release.wait()
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    if inline:
        app.streamd_runs_inline = True  # type: ignore[attr-defined]
    hconfig = HypercornConfig()
    hconfig.bind = ["127.0.0.1:0"]
    hconfig.accesslog = None
    hconfig.keep_alive_timeout = keep_alive_timeout
    hconfig.graceful_timeout = 10
    sockets = bind_sockets(hconfig, "the test listener")
    table = ConnectionTable(64)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve_http(
                app, hconfig, sockets, table, shutdown=stop.wait, task_status=task_status
            )
        )
        yield Edge(binds[0], table, stop, release, arrived)
        stop.set()
        release.set()


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), what


@pytest.mark.parametrize("inline", [False, True], ids=["hypercorns-way", "inline"])
async def test_a_kept_alive_connection_starts_no_task_per_request_but_the_apps(
    inline: bool,
) -> None:
    """hypercorn's own timer started one task (_idle_timeout) per request besides the
    app's; an app marked ``RUNS_INLINE`` runs in the connection's task: none at all."""
    requests = 20
    spawned = Spawned()
    async with edge(keep_alive_timeout=30, inline=inline) as server:
        stream = await trio.open_tcp_stream(*split_url(server.url))
        async with stream:
            await stream.send_all(REQUEST)  # the connection's own tasks start here
            assert (await read_answer(stream, check_close=False)).status == 200
            trio.lowlevel.add_instrument(spawned)
            try:
                for _ in range(requests):
                    await stream.send_all(REQUEST)
                    assert (await read_answer(stream, check_close=False)).status == 200
            finally:
                trio.lowlevel.remove_instrument(spawned)
    assert server.arrived[0] == requests + 1
    per_request = {name: n for name, n in spawned.names.items() if n >= requests}
    assert per_request == ({} if inline else {APP_TASK: requests}), spawned.names


@pytest.mark.parametrize("inline", [False, True], ids=["hypercorns-way", "inline"])
async def test_an_idle_connection_is_closed_at_the_deadline_after_each_answer(inline: bool) -> None:
    async with edge(keep_alive_timeout=0.5, inline=inline) as server:
        stream = await trio.open_tcp_stream(*split_url(server.url))
        async with stream:
            for _ in range(3):  # requests well inside the deadline: the same connection
                await stream.send_all(REQUEST)
                assert (await read_answer(stream, check_close=False)).status == 200
            # Then nothing: closed by the deadline (bounded wait, not a timing check).
            assert await closes(stream, timeout=20)
        await wait_for(lambda: len(server.table) == 0, "the connection left the table")


@pytest.mark.parametrize("inline", [False, True], ids=["hypercorns-way", "inline"])
async def test_no_deadline_while_a_request_is_in_progress(inline: bool) -> None:
    async with edge(keep_alive_timeout=0.2, hold=True, inline=inline) as server:
        stream = await trio.open_tcp_stream(*split_url(server.url))
        async with stream:
            await stream.send_all(REQUEST)
            await wait_for(lambda: server.arrived[0] == 1, "the app has the request")
            # Many deadlines' worth with the app busy: the connection stays open.
            assert not await closes(stream, timeout=1.5)
            server.release.set()
            assert (await read_answer(stream, check_close=False)).status == 200
            assert await closes(stream, timeout=20)  # idle again: the deadline applies


@pytest.mark.parametrize("inline", [False, True], ids=["hypercorns-way", "inline"])
async def test_stopping_closes_an_idle_connection_and_a_busy_one_after_its_answer(
    inline: bool,
) -> None:
    # A deadline far away: what closes them is the stop.
    async with edge(keep_alive_timeout=600, hold=True, inline=inline) as server:
        idle = await trio.open_tcp_stream(*split_url(server.url))
        busy = await trio.open_tcp_stream(*split_url(server.url))
        async with idle, busy:
            server.release.set()
            await idle.send_all(REQUEST)
            assert (await read_answer(idle, check_close=False)).status == 200
            server.release = trio.Event()  # the next request waits
            await busy.send_all(REQUEST)
            await wait_for(lambda: server.arrived[0] == 2, "the app has the second request")
            server.stop.set()
            assert await closes(idle, timeout=10)
            assert not await closes(busy, timeout=0.5)
            server.release.set()
            answer = await read_answer(busy, timeout=10)
            assert (answer.status, answer.closed) == (200, True)
        await wait_for(lambda: len(server.table) == 0, "both connections left the table")


async def test_a_client_that_half_closes_during_a_request_leaves_no_task_behind() -> None:
    """The client's end of the stream arrives while the app works: hypercorn runs no
    timer then, so the connection's task group (and its table entry) must end with the
    app's task, not wait for a deadline that never comes."""
    async with edge(keep_alive_timeout=600, until_disconnect=True) as server:
        stream = await trio.open_tcp_stream(*split_url(server.url))
        async with stream:
            await stream.send_all(REQUEST)
            await wait_for(lambda: server.arrived[0] == 1, "the app has the request")
            # The app answers once hypercorn has read this end of the stream.
            stream.socket.shutdown(socket.SHUT_WR)
            await wait_for(lambda: len(server.table) == 0, "the connection left the table")


@pytest.mark.parametrize("inline", [False, True], ids=["hypercorns-way", "inline"])
async def test_a_connection_its_client_closed_while_idle_is_let_go_at_once(inline: bool) -> None:
    """hypercorn's timer kept it (a task, its memory, a place in the connection table)
    until the keep-alive deadline: here 600 s."""
    async with edge(keep_alive_timeout=600, inline=inline) as server:
        stream = await trio.open_tcp_stream(*split_url(server.url))
        async with stream:
            await stream.send_all(REQUEST)
            assert (await read_answer(stream, check_close=False)).status == 200
        await wait_for(lambda: len(server.table) == 0, "the connection left the table")


async def test_a_client_that_half_closes_while_an_inline_app_works_gets_its_answer() -> None:
    """The connection is not read while an app marked ``RUNS_INLINE`` works: the
    client's end is read after the answer, which it still gets, and the connection
    leaves the table then."""
    async with edge(keep_alive_timeout=600, hold=True, inline=True) as server:
        stream = await trio.open_tcp_stream(*split_url(server.url))
        async with stream:
            await stream.send_all(REQUEST)
            await wait_for(lambda: server.arrived[0] == 1, "the app has the request")
            stream.socket.shutdown(socket.SHUT_WR)
            await trio.sleep(0.1)
            assert len(server.table) == 1  # the app is still working: not read yet
            server.release.set()
            answer = await read_answer(stream, timeout=10)
            assert (answer.status, answer.body, answer.closed) == (200, b"ok", True)
        await wait_for(lambda: len(server.table) == 0, "the connection left the table")
