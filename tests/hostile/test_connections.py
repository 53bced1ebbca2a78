"""Floods of connections cannot lock a sender out: the real ``streamd serve`` under a
lowered ``RLIMIT_NOFILE``, attacked from this process over loopback.

Issue 13, case 3: 5,000 idle connections took RSS from 54 to 140 MB, not returned after
they closed; under ``nofile`` 2048, 2,100 idle connections made legitimate posts time
out, and "accept returned EMFILE" was logged with a traceback 277 times in 28 s. And the
issue's "must show": while slow clients attack a signed source *and* idle connections
fill the descriptors, token-authenticated posts to another source all get 200, on a
kept-alive connection and on fresh ones alike (the latency figures are printed; they
are measured for the record by ``bench/edge.py``, never asserted here).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import fixture_bytes
from tests.system._harness import Processes, Server, read_token, streamd_argv

from ._wire import SIGNATURE, Answer, post_head, read_answer
from .conftest import scale


@pytest.fixture(autouse=True)
def _enough_descriptors_here() -> Iterator[None]:
    """This process opens thousands of connections: raise its own soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 16384) if hard != resource.RLIM_INFINITY else 16384
    if wanted < 6000:
        pytest.skip(f"the hard RLIMIT_NOFILE here is {hard}; the flood needs about 6000")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start(processes: Processes, tmp_path: Path, *, nofile: int, server_toml: str = "") -> Server:
    """``streamd serve`` with a signed source ``/io`` and a token source ``/events``,
    its descriptors capped at ``nofile`` (prlimit, util-linux)."""
    data_dir = tmp_path / "data"
    config = tmp_path / "streamd.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1:0"]
body_grace = 1
body_timeout = 10
min_body_rate = 100
{server_toml}
[admin]
listen = "127.0.0.1:0"
[[sources]]
name = "io"
path = "/io"
auth = "adobe-signature"
[sources.adobe]
client_id = "streamd-test-client"
key_host = "http://127.0.0.1:9"
[[sources]]
name = "events"
path = "/events"
"""
    )
    argv = [
        "prlimit",
        f"--nofile={nofile}:{nofile}",
        "--",
        *streamd_argv(),
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir),
    ]
    server = Server(processes.spawn(argv, "streamd"), data_dir)
    server.wait_ready()
    return server


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def hold_idle(port: int, stop: trio.Event, opened: list[int]) -> None:
    """One idle connection, opened again whenever the server closes it, until ``stop``."""
    while not stop.is_set():
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)
            continue
        opened[0] += 1
        async with stream:
            with trio.move_on_at(trio.current_time() + 3600) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on, stop, scope)
                    try:
                        await stream.receive_some(1)  # returns when the server closes it
                    except trio.BrokenResourceError:
                        pass
                    nursery.cancel_scope.cancel()
        # Back after half a second: a flood that keeps its connections open, not a busy
        # loop of connects (which would measure this 2-core machine's CPU, nothing else).
        await trio.sleep(0.5)


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def slow_signed(port: int, stop: trio.Event, answers: list[Answer]) -> None:
    """A slowloris on the signed source: valid-looking headers, then a byte a second,
    again and again until ``stop``."""
    head = post_head("/io", {**SIGNATURE, "Content-Length": "10000"})

    async def drip(stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(head)
            while True:
                await stream.send_all(b"[")
                await trio.sleep(1.0)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    while not stop.is_set():
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)
            continue
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(drip, stream)
            with trio.move_on_at(trio.current_time() + 60):
                try:
                    answers.append(await read_answer(stream, timeout=60))
                except (ConnectionError, trio.BrokenResourceError, trio.TooSlowError):
                    pass
            nursery.cancel_scope.cancel()


async def legit_posts(
    port: int, token: str, count: int, *, keep_alive: bool, closed: list[int] | None = None
) -> list[float]:
    """``count`` token posts to ``/events``; their latencies. Fails unless all get 200.

    With ``closed``, a fresh connection (``keep_alive=False``) the server closes before
    answering is counted there and the post sent again on a new one, as a sender does
    (at most twice per post)."""
    body = fixture_bytes("lads_single")
    latencies: list[float] = []
    stream: trio.SocketStream | None = None
    try:
        for n in range(count):
            request = post_head(
                "/events",
                {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    **({} if keep_alive else {"Connection": "close"}),
                },
            )
            started = trio.current_time()
            for attempt in range(3 if closed is not None and not keep_alive else 1):
                if stream is None:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                try:
                    await stream.send_all(request + body)
                    answer = await read_answer(stream, timeout=30, check_close=not keep_alive)
                    break
                except (ConnectionError, trio.BrokenResourceError):
                    if closed is None or keep_alive or attempt == 2:
                        raise
                    closed.append(n)
                    await stream.aclose()
                    stream = None
            latencies.append(trio.current_time() - started)
            assert answer.status == 200, (n, answer)
            assert answer.headers.get(b"connection") != b"close" or not keep_alive
            if not keep_alive:
                assert answer.closed and stream is not None
                await stream.aclose()
                stream = None
            await trio.sleep(0.05)
    finally:
        if stream is not None:
            await stream.aclose()
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_slow_clients_and_an_idle_flood_do_not_lock_out_a_sender(
    processes: Processes, tmp_path: Path
) -> None:
    nofile = scale(512, 2048)
    idle, slow = scale(600, 2000), scale(40, 300)
    # Bounded: 64 slots (32 for the signed source) against 40 slowloris connections.
    server = start(processes, tmp_path, nofile=nofile, server_toml=scale("max_in_flight = 64", ""))
    token = read_token(server.data_dir / "api-token")
    baseline = rss_kib(server.spawned.pid)
    stop = trio.Event()
    answers: list[Answer] = []
    opened = [0]
    async with trio.open_nursery() as attack:
        for _ in range(idle):
            attack.start_soon(hold_idle, server.port, stop, opened)
        for _ in range(slow):
            attack.start_soon(slow_signed, server.port, stop, answers)
        with trio.fail_after(120):
            while opened[0] < idle:
                await trio.sleep(0.1)
        peak = rss_kib(server.spawned.pid)
        posts = scale(40, 400)
        async with trio.open_nursery() as legit:
            kept: list[float] = []
            fresh: list[float] = []

            async def run(into: list[float], keep_alive: bool) -> None:
                into.extend(await legit_posts(server.port, token, posts, keep_alive=keep_alive))

            legit.start_soon(run, kept, True)
            legit.start_soon(run, fresh, False)
        stop.set()
        attack.cancel_scope.cancel()
    assert len(kept) == len(fresh) == posts
    print(
        f"nofile {nofile}, {idle} idle ({opened[0]} opened), {slow} slow: "
        f"p99 kept-alive {p99(kept) * 1000:.0f} ms, fresh {p99(fresh) * 1000:.0f} ms; "
        f"RSS {baseline} -> {peak} KiB"
    )
    # The slowloris connections were answered 503 (their share full, or too slow).
    assert answers and {a.status for a in answers} == {503}
    log = server.spawned.stderr()
    assert "Traceback" not in log
    assert "EMFILE" not in log  # the cap kept accepting clear of the descriptor limit


async def test_out_of_descriptors_pauses_accepting_logs_once_and_recovers(
    processes: Processes, tmp_path: Path
) -> None:
    # A cap above the descriptors: accept() meets EMFILE (the case the cap prevents).
    server = start(processes, tmp_path, nofile=200, server_toml="max_connections = 5000")
    token = read_token(server.data_dir / "api-token")
    stop = trio.Event()
    opened = [0]
    async with trio.open_nursery() as attack:
        for _ in range(400):
            attack.start_soon(hold_idle, server.port, stop, opened)
        with trio.fail_after(60):
            while "out of file descriptors" not in server.spawned.stderr():
                await trio.sleep(0.1)
        # A sender still gets in: each pause closes the longest-idle connection. A fresh
        # connection whose request has not arrived when a pause needs descriptors may be
        # closed unanswered (it looks idle): the sender sends again, as Adobe and Marketo
        # do. Twice in CI on a loaded machine (test_edge.py has the rules on their own).
        closed: list[int] = []
        latencies = await legit_posts(server.port, token, 10, keep_alive=False, closed=closed)
        print(f"posts sent again after their connection was closed unanswered: {closed}")
        stop.set()
        attack.cancel_scope.cancel()
    assert len(latencies) == 10
    log = server.spawned.stderr()
    assert "Traceback" not in log
    # One line per 10 s interval (up to 3 at its start), not one per failed accept.
    assert 1 <= log.count("out of file descriptors") <= 3 * (1 + int(60 / 10))


async def test_memory_of_a_connection_flood_is_returned(
    processes: Processes, tmp_path: Path
) -> None:
    # A far header deadline: on a loaded machine opening the flood once took long
    # enough (CI, beside the kafka crash tests) that the first connections met the
    # default 30 s deadline and closed before the last opened, so the count below was
    # never reached.
    server = start(processes, tmp_path, nofile=8192, server_toml="keep_alive_timeout = 600")
    pid = server.spawned.pid
    base_fds = open_fds(pid)
    baseline = rss_kib(pid)
    flood = scale(3000, 4000)  # at most the automatic cap (4,096)
    peaks, afters = [], []
    for _ in range(3):
        streams = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(flood)]
        # Every one accepted (a descriptor each in the server).
        await wait_fds(pid, lambda n: n >= base_fds + flood, f"{base_fds} + {flood}")
        peaks.append(rss_kib(pid))
        for stream in streams:
            await stream.aclose()
        # Every one closed by the server too.
        await wait_fds(pid, lambda n: n <= base_fds, f"at most {base_fds}")
        afters.append(rss_kib(pid))
    print(f"RSS {baseline} KiB; {flood} connections, 3 times: peaks {peaks}, after {afters}")
    grown = peaks[0] - baseline
    assert grown > 1_000, "the flood did not reach the server"
    # An idle connection costs about 5 KiB (17.6 KiB before hypercorn's machinery waited
    # for the first byte); part is given back after the flood, the rest is reused: the
    # floods after the first cost no more.
    assert grown / flood < 8, f"{grown / flood:.1f} KiB per idle connection"
    assert all(after < max(peaks) for after in afters), (baseline, peaks, afters)
    assert max(peaks) - baseline < grown * 1.2, (baseline, peaks)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_fds(pid: int, done: Callable[[int], bool], wanted: str) -> None:
    """Wait up to 60 s for the server's descriptor count to satisfy ``done``."""
    with trio.move_on_after(60):
        while not done(count := open_fds(pid)):
            await trio.sleep(0.1)
        return
    raise AssertionError(f"the server has {count} descriptors open after 60 s; wanted {wanted}")
