"""``server.workers``: real worker processes serve the listeners, this process journals.

The service runs in the test's trio loop as elsewhere; its workers are real child
processes on the same loopback sockets, so every request here crosses a worker,
the socketpair and the main process's journal writer.
"""

from __future__ import annotations

import os
import signal
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from streamd.errors import ConfigError
from streamd.journal import WriterOptions, open_journal
from streamd.service import Running, serve
from streamd.service.config import Config
from streamd.service.listeners import hypercorn_config
from streamd.service.workers import WorkerPool
from tests.conftest import fixture_bytes
from tests.integration.conftest import TOKEN, Server, StartServer, make_config
from tests.integration.test_errors import assert_a_full_queue_is_503, write_locked
from tests.integration.test_ingest import count
from tests.integration.test_metrics import scrape, value
from tests.system._harness import exited

ONE = "[server]\nworkers = 1\n"


def pool(server: Server | Running) -> WorkerPool:
    running = server.running if isinstance(server, Server) else server
    assert running.workers is not None
    return running.workers


def alive(pid: int | None) -> bool:
    return pid is not None and not exited(pid)


async def test_workers_serve_and_the_main_process_journals(start_server: StartServer) -> None:
    server = await start_server("[server]\nworkers = 2\n")
    pids = pool(server).statistics().pids
    assert len(pids) == 2 and all(alive(pid) for pid in pids) and os.getpid() not in pids
    reply = await server.post(fixture_bytes("legacy_push"))
    assert reply.json() == {"accepted": 4, "duplicates": 0}
    again = await server.post(fixture_bytes("legacy_push"))
    assert again.json() == {"accepted": 0, "duplicates": 4}
    challenge = await server.client.get(server.url + "/events?challenge=abc")
    assert (challenge.status_code, challenge.text) == (200, "abc")
    assert count(server) == 4
    assert server.running.journal.statistics().batches == 2


async def test_answers_are_counted_in_the_main_process_metrics(start_server: StartServer) -> None:
    server = await start_server(ONE)
    assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200
    assert (await server.post(b"{not json")).status_code == 400
    bad = await server.client.post(
        server.url + "/events", content=b"[]", headers={"Authorization": "Bearer wrong"}
    )
    assert bad.status_code == 401
    # Workers report what they answered every 0.25 s.
    await server.wait_for(lambda: pool(server).responses.get(401) == 1, "the worker's report")
    m = await scrape(server)
    assert value(m, "streamd_requests_total", source="events", status="200") == 1
    assert value(m, "streamd_requests_total", source="events", status="400") == 1
    assert value(m, "streamd_requests_total", source="events", status="401") == 1
    assert value(m, "streamd_ack_latency_seconds_count", source="events") == 1
    assert value(m, "streamd_source_requests_24h", source="events") == 3
    assert value(m, "streamd_events_journaled_total", source="events", stream="activity") == 6
    assert value(m, "streamd_ingest_worker_restarts_total") == 0
    # The worker's connection table, reported with its answers.
    assert value(m, "streamd_connections_accepted_total") >= 1
    assert value(m, "streamd_connections_limit") > 0


async def test_a_full_queue_is_the_same_503(start_server: StartServer) -> None:
    server = await start_server(ONE + "[journal]\nmax_queued_events = 10\ncommit_budget = 30.0\n")
    await assert_a_full_queue_is_503(server)
    await server.wait_for(lambda: pool(server).responses.get(503) == 1, "the worker's report")
    m = await scrape(server)
    assert value(m, "streamd_unavailable_responses_total", reason="queue_full") == 1


async def test_the_commit_budget_is_the_same_503(start_server: StartServer) -> None:
    server = await start_server(ONE + "[journal]\ncommit_budget = 0.3\n")
    with write_locked(server.journal):
        response = await server.post(fixture_bytes("lads_batch"))
    assert response.status_code == 503
    assert "did not commit within 0.3 s" in response.json()["error"]
    assert response.headers["retry-after"] == "5"
    retry = await server.post(fixture_bytes("lads_batch"))
    assert retry.status_code == 200
    assert count(server) == 6


async def test_low_disk_is_the_same_503(start_server: StartServer) -> None:
    server = await start_server(ONE + "[journal]\nmin_free_disk_mib = 1000000000\n")
    response = await server.post(fixture_bytes("lads_single"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert "free disk space" in response.json()["error"]
    assert count(server) == 0


async def test_max_in_flight_bounds_the_workers_together(start_server: StartServer) -> None:
    # 3 over 2 workers: each takes 2 (rounded up), so at most 4 at once.
    server = await start_server(
        "[server]\nworkers = 2\nmax_in_flight = 3\n[journal]\ncommit_budget = 30.0\n"
    )
    statuses: list[int] = []
    with write_locked(server.journal) as blocker:
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30):

            async def stuck(client: httpx.AsyncClient) -> None:
                headers = {"Content-Type": "application/json", **server.auth()}
                reply = await client.post(
                    server.url + "/events", content=fixture_bytes("lads_single"), headers=headers
                )
                statuses.append(reply.status_code)

            # Separate connections: the kernel spreads them over the two workers.
            clients = [httpx.AsyncClient(timeout=30) for _ in range(6)]
            for client in clients:
                nursery.start_soon(stuck, client)
            await server.wait_for(lambda: len(statuses) >= 2, "the refusals past the bound")
            assert statuses.count(503) >= 2
            blocker.execute("ROLLBACK")
        for client in clients:
            await client.aclose()
    assert statuses.count(200) == 6 - statuses.count(503)
    assert 2 <= statuses.count(503) <= 4


async def test_a_killed_worker_is_started_again_and_no_acknowledged_event_is_lost(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(ONE + "[journal]\ncommit_budget = 30.0\n")
    (victim,) = pool(server).statistics().pids
    assert victim is not None
    outcome: list[object] = []
    with write_locked(server.journal) as blocker:
        async with trio.open_nursery() as nursery:

            async def in_flight() -> None:
                try:
                    outcome.append((await server.post(fixture_bytes("lads_batch"))).status_code)
                except httpx.HTTPError as exc:
                    outcome.append(exc)

            nursery.start_soon(in_flight)
            journal = server.running.journal
            await server.wait_for(lambda: journal.statistics().queued_events == 6, "queued")
            os.kill(victim, signal.SIGKILL)
            await server.wait_for(lambda: bool(outcome), "the in-flight request to fail")
        assert isinstance(outcome[0], httpx.HTTPError), outcome  # never a 200
        blocker.execute("ROLLBACK")
    await server.wait_for(
        lambda: alive(pool(server).statistics().pids[0]) and pool(server).restarts == 1,
        "a new worker",
    )
    assert pool(server).statistics().pids[0] != victim
    # The sender retries; the batch the dead worker had passed on may already be in.
    retry = await server.post(fixture_bytes("lads_batch"))
    assert retry.status_code == 200
    assert retry.json()["accepted"] + retry.json()["duplicates"] == 6
    assert count(server) == 6
    assert "ingest worker 0" in caplog.text and "signal SIGKILL" in caplog.text
    m = await scrape(server)
    assert value(m, "streamd_ingest_worker_restarts_total") == 1


async def test_stop_lets_a_request_in_flight_finish_then_the_workers_exit(
    data_dir: Path,
) -> None:
    config = make_config(data_dir, ONE + "[journal]\ncommit_budget = 30.0\n")
    statuses: list[int] = []
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        running: Running = await nursery.start(partial(serve, config, announce=lambda line: None))
        (pid,) = pool(running).statistics().pids
        url = running.binds[0]
        with write_locked(data_dir / "journal.db") as blocker:

            async def in_flight() -> None:
                reply = await client.post(
                    url + "/events",
                    content=fixture_bytes("lads_batch"),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                statuses.append(reply.status_code)

            nursery.start_soon(in_flight)
            journal = running.journal
            with trio.fail_after(10):
                while journal.statistics().queued_events != 6:
                    await trio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)  # the service's own signal watcher
            with trio.fail_after(10):
                while not pool(running).stopping:
                    await trio.sleep(0.01)
            assert alive(pid), "the worker waits for the answer to its request in flight"
            blocker.execute("ROLLBACK")
            with trio.fail_after(15):
                while alive(pid):
                    await trio.sleep(0.01)
    assert statuses == [200]


async def test_sighup_sends_new_sources_and_tokens_to_the_workers(
    data_dir: Path, tmp_path: Path
) -> None:
    toml = tmp_path / "streamd.toml"
    toml.write_text(ONE)
    tokens = tmp_path / "rotated"
    tokens.write_text("rotated-token-0123456789\n")

    def load() -> Config:
        return make_config(data_dir, toml.read_text())

    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        running = await nursery.start(partial(serve, load(), reload=load))
        body = fixture_bytes("lads_single")

        async def post(path: str, token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return (
                await client.post(running.binds[0] + path, content=body, headers=headers)
            ).status_code

        assert await post("/events", TOKEN) == 200
        toml.write_text(
            ONE + f'[[sources]]\nname = "moved"\npath = "/moved"\ntoken_files = ["{tokens}"]\n'
        )
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            while await post("/moved", "rotated-token-0123456789") != 200:
                await trio.sleep(0.05)
        assert await post("/events", TOKEN) == 404
        assert await post("/moved", TOKEN) == 401
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("import sys; sys.exit(7)", "ingest worker 0 exited with status 7 before serving"),
        # A worker that speaks nonsense on the socketpair is killed, not trusted.
        (
            "import os, sys, time; os.write(int(sys.argv[1]), b'\\0\\0\\0\\2\\xc1\\xc1'); "
            "time.sleep(60)",
            "ingest worker 0 exited with signal SIGKILL before serving",
        ),
    ],
    ids=["exits", "bad-frame"],
)
async def test_a_worker_that_cannot_start_stops_the_start_with_a_clear_error(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    script: str,
    message: str,
) -> None:
    def command(self: WorkerPool, ipc_fd: int) -> list[str]:
        return [sys.executable, "-c", script, str(ipc_fd)]

    monkeypatch.setattr(WorkerPool, "command", command)
    # (No admin listener: a start that fails leaves its sockets to the garbage collector,
    # in one process as with workers; the CLI exits right after.)
    config = make_config(data_dir, ONE + "[admin]\nenabled = false\n")
    with pytest.raises(BaseExceptionGroup) as raised:  # trio's nurseries group errors
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, config, announce=lambda line: None))
    ours, rest = raised.value.split(ConfigError)
    assert rest is None and ours is not None
    assert message in repr(ours)
    if "SIGKILL" in message:
        assert "sent a bad frame" in caplog.text


async def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(ONE)
    real = WorkerPool.command

    def broken(self: WorkerPool, ipc_fd: int) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit(7)"]

    monkeypatch.setattr(WorkerPool, "command", broken)
    (victim,) = pool(server).statistics().pids
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    await server.wait_for(lambda: pool(server).restarts >= 3, "three restarts")
    assert "exited with signal SIGKILL; starting it again in 0.5 s" in caplog.text
    assert "exited with status 7; starting it again in 1 s" in caplog.text
    assert "exited with status 7; starting it again in 2 s" in caplog.text
    monkeypatch.setattr(WorkerPool, "command", real)
    # The next start (after at most 4 s) serves again; meanwhile connections wait.
    reply = await server.post(fixture_bytes("lads_single"))
    assert reply.status_code == 200


async def test_a_stop_before_the_workers_started_starts_none(data_dir: Path) -> None:
    config = make_config(data_dir, ONE)
    hc = hypercorn_config(config)
    sockets = hc.create_sockets()
    async with open_journal(str(data_dir / "journal.db"), WriterOptions()) as journal:
        workers = WorkerPool(config, journal, sockets)
        workers.begin_shutdown()  # a signal while the service was starting
        with trio.fail_after(5):
            await workers.serve()
    assert workers.statistics().pids == (None,)
    assert all(s.fileno() == -1 for s in sockets.insecure_sockets)  # closed


async def test_workers_run_this_streamd_whatever_the_working_directory(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``streamd`` package in the daemon's working directory (another checkout) is not
    what the workers import: ``python -m`` puts the working directory first on the path,
    so they are started with ``-P`` and run the daemon's own."""
    other = tmp_path / "checkout"
    (other / "streamd").mkdir(parents=True)
    (other / "streamd" / "__init__.py").write_text("raise SystemExit(7)\n")
    monkeypatch.chdir(other)
    server = await start_server(ONE)
    assert (await server.post(fixture_bytes("legacy_push"))).json() == {
        "accepted": 4,
        "duplicates": 0,
    }
