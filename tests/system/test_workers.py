"""``server.workers`` with the real ``streamd`` process: its workers die, or it does.

A killed worker is started again and nothing it had acknowledged is lost (it
acknowledges only what the main process committed); when the main process dies,
its workers notice the end of their socketpair and exit at once, so nothing keeps
accepting deliveries that no one can journal.
"""

from __future__ import annotations

import os
import random
import signal
from functools import partial
from pathlib import Path

from ._harness import (
    LoadClient,
    Processes,
    Server,
    check_batches_atomic,
    check_journal,
    children,
    exited,
    fixture_bytes,
    legacy_ids,
    post,
    refuses_connections,
    serve,
    stop_gracefully,
    total_acked,
    wait_for,
)

LEGACY = fixture_bytes("legacy_push.json")


def _replaced(server: Server, victim: int) -> bool:
    now = children(server.spawned.pid)
    return len(now) == 2 and victim not in now


def serve_with_workers(processes: Processes, tmp_path: Path, workers: int) -> Server:
    config = tmp_path / "streamd.toml"
    config.write_text(f"[server]\nworkers = {workers}\ngraceful_timeout = 3.0\n")
    server = serve(processes, tmp_path / "data", args=["--config", str(config)])
    wait_for(
        lambda: len(children(server.spawned.pid)) == workers,
        timeout=10,
        what=f"{workers} worker processes",
    )
    return server


def test_workers_exit_when_the_main_process_dies(tmp_path: Path, processes: Processes) -> None:
    server = serve_with_workers(processes, tmp_path, 2)
    reply = post(server.port, LEGACY, token=server.token())
    assert (reply.status, reply.body) == (200, {"accepted": 4, "duplicates": 0})
    workers = children(server.spawned.pid)

    server.spawned.popen.kill()
    assert server.spawned.wait(10) == -signal.SIGKILL
    wait_for(
        lambda: all(exited(pid) for pid in workers),
        timeout=10,
        what="the workers to exit after the main process died",
    )
    assert refuses_connections(server.port), "nothing may accept deliveries any more"
    check_journal(server.journal, legacy_ids(LEGACY))


def test_killed_workers_are_replaced_and_nothing_acknowledged_is_lost(
    tmp_path: Path, processes: Processes
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    print(f"workers kill test: seed={seed}")
    rng = random.Random(seed)
    server = serve_with_workers(processes, tmp_path, 2)
    clients = [
        LoadClient.start(
            processes,
            port=server.port,
            token_file=server.data_dir / "api-token",
            seed=seed,
            client=index,
        )
        for index in range(2)
    ]
    wait_for(lambda: total_acked(clients) >= 5, timeout=20, what="5 acknowledged batches")
    for kill in range(1, 4):
        victim = rng.choice(children(server.spawned.pid))
        before = total_acked(clients)
        os.kill(victim, signal.SIGKILL)
        # A replacement comes up and deliveries go on.
        wait_for(
            partial(_replaced, server, victim),
            timeout=20,
            what=f"a replacement for worker {victim}",
            context=server.spawned.stderr,
        )
        wait_for(
            partial(lambda n: total_acked(clients) > n, before),
            timeout=20,
            what=f"acknowledgements after kill {kill}",
            context=server.spawned.stderr,
        )
    summaries = [client.stop() for client in clients]
    stop_gracefully(server)
    stderr = server.spawned.stderr()
    assert stderr.count("exited with signal SIGKILL; starting it again") == 3, stderr[-3000:]
    for summary in summaries:
        assert summary["violations"] == [], summary
        assert set(summary["statuses"]) <= {"200", "503"}, summary
    acked = set().union(*(client.acked_ids() for client in clients))
    keys = check_journal(server.journal, acked)
    check_batches_atomic([b for client in clients for b in client.sent_batches()], keys)
