"""Slow clients hold no slot for long, and one source's slow clients cannot take the
slots of another.

Issue 13, case 1: 300 connections with valid-looking signature headers,
``Content-Length: 10000`` and then one body byte a second held all ``max_in_flight``
slots for as long as they liked (the read timeout restarts with every byte), and
token-authenticated posts to another source got 503 every time.
"""

from __future__ import annotations

import trio

from tests.conftest import fixture_bytes
from tests.integration.conftest import TOKEN, Server, StartServer

from ._wire import SIGNATURE, Answer, closes, post_head, read_answer, split_url
from .conftest import scale


def config(extra: str = "") -> str:
    return f"""
[server]
max_in_flight = 32
body_timeout = 8
body_grace = 1
min_body_rate = 200
keep_alive_timeout = 2
{extra}
[[sources]]
name = "io"
path = "/io"
auth = "adobe-signature"
[sources.adobe]
client_id = "streamd-test-client"
key_host = "http://127.0.0.1:9"
fetch_timeout = 1.0
[[sources]]
name = "events"
path = "/events"
"""


async def trickle(
    url: str, head: bytes, *, every: float, answers: list[Answer], started: trio.Event | None
) -> None:
    """Send ``head``, then one body byte per ``every`` s until the server answers."""
    stream = await trio.open_tcp_stream(*split_url(url))
    async with stream:
        await stream.send_all(head)
        if started is not None:
            started.set()
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                try:
                    while True:
                        await stream.send_all(b"[")
                        await trio.sleep(every)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

            nursery.start_soon(drip)
            answers.append(await read_answer(stream, timeout=60))
            nursery.cancel_scope.cancel()


async def test_slow_signed_bodies_leave_the_other_source_its_share(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(config())
    app = server.running.app
    assert app.shares() == {"io": 16, "events": 16}
    slow = scale(40, 300)  # more than all 32 slots
    head = post_head("/io", {**SIGNATURE, "Content-Length": "10000"})
    answers: list[Answer] = []
    async with trio.open_nursery() as nursery:
        for _ in range(slow):
            nursery.start_soon(
                lambda: trickle(server.url, head, every=0.5, answers=answers, started=None)
            )
        # The signed source's share fills up; the rest of its clients get 503 at once.
        await server.wait_for(lambda: app.held("io") == 16, "the io share full")
        statuses = []
        for _ in range(20):
            reply = await server.post(fixture_bytes("lads_single"))
            statuses.append(reply.status_code)
        assert statuses == [200] * 20
    assert len(answers) == slow
    # Every slow client was answered 503 + Retry-After: those past the share at once,
    # the others once their body fell below the rate; each connection was then closed.
    assert {a.status for a in answers} == {503}
    assert all(a.headers.get(b"retry-after") for a in answers)
    assert sum(b"too many requests in flight for io" in a.body for a in answers) == slow - 16
    slowed = [a for a in answers if b"slower than 200 bytes/s" in a.body]
    assert len(slowed) == 16
    assert all(a.closed and a.headers[b"connection"] == b"close" for a in slowed)
    assert app.in_flight == 0


async def test_a_token_holder_sending_slowly_gets_503_and_frees_its_slot(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(config())
    head = post_head("/events", {"Authorization": f"Bearer {TOKEN}", "Content-Length": "5000"})
    answers: list[Answer] = []
    with trio.fail_after(20):
        await trickle(server.url, head, every=0.5, answers=answers, started=None)
    assert answers[0].status == 503
    assert answers[0].headers[b"retry-after"] == b"5"
    assert b"slower than 200 bytes/s after 1 s" in answers[0].body
    assert answers[0].closed
    assert server.running.app.in_flight == 0
    metrics = server.running.metrics.render().decode()
    assert 'streamd_unavailable_responses_total{reason="slow_body"} 1.0' in metrics


async def test_a_body_that_keeps_the_rate_but_never_ends_meets_the_deadline(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(config())
    head = post_head("/events", {"Authorization": f"Bearer {TOKEN}", "Content-Length": "100000"})
    stream = await trio.open_tcp_stream(*split_url(server.url))
    async with stream:
        await stream.send_all(head)
        async with trio.open_nursery() as nursery:

            async def steady() -> None:  # 300 bytes/s: above the minimum rate
                try:
                    while True:
                        await stream.send_all(b" " * 30)
                        await trio.sleep(0.1)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

            nursery.start_soon(steady)
            answer = await read_answer(stream, timeout=30)
            nursery.cancel_scope.cancel()
    assert answer.status == 503
    assert b"did not arrive within 8 s" in answer.body
    assert answer.closed


async def test_slow_headers_meet_hypercorns_header_deadline_and_hold_no_slot(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(config())
    stream = await trio.open_tcp_stream(*split_url(server.url))
    closed = False
    async with stream:
        head = post_head("/events", {"Authorization": f"Bearer {TOKEN}", "X-Pad": "a" * 200})
        # One byte every 0.2 s: the read timeout never fires, the header deadline does.
        for byte in head[:-4]:
            try:
                await stream.send_all(bytes([byte]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                closed = True
                break
            assert server.running.app.in_flight == 0
            if await closes(stream, timeout=0.2):
                closed = True
                break
    # Bounded by the head's length: 260 bytes at 0.2 s is 52 s, the deadline is 2 s.
    assert closed, "a client sending its headers byte by byte was never cut off"


async def test_a_signed_source_refuses_a_body_of_unknown_length_before_a_slot(
    start_server: StartServer,
) -> None:
    server: Server = await start_server(config())
    head = post_head("/io", {**SIGNATURE, "Transfer-Encoding": "chunked"})
    stream = await trio.open_tcp_stream(*split_url(server.url))
    async with stream:
        await stream.send_all(head + b"5\r\n[1,2]\r\n")
        answer = await read_answer(stream)
    assert answer.status == 411
    assert b"needs Content-Length" in answer.body
    assert server.running.app.in_flight == 0


async def test_shares_follow_the_config(start_server: StartServer) -> None:
    toml = config().replace(
        'name = "io"\npath = "/io"', 'name = "io"\npath = "/io"\nmax_in_flight = 4'
    )
    server: Server = await start_server(toml)
    shares = server.running.app.shares()
    assert shares == {"io": 4, "events": 28}
    assert sum(shares.values()) == server.running.app.limits.max_in_flight == 32
