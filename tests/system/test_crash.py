"""Ack means durable: SIGKILL streamd at random moments under load, lose nothing acknowledged.

Several sender processes post batches as fast as they can (``_load_client.py``) and
record every batch that got its 200. The server is killed with SIGKILL at random
moments and restarted on the same port and data directory. At the end every
acknowledged id must be in the journal exactly once, every batch must be all in or
all out, and the SQLite file must pass ``PRAGMA integrity_check``.

The kill moments come from a seed printed at the start; set ``STREAMD_CRASH_SEED`` to
replay a run (the moments, the batches and the re-sends; not the thread scheduling).
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from functools import partial
from pathlib import Path

import pytest

from ._harness import (
    LoadClient,
    Processes,
    Server,
    check_batches_atomic,
    check_journal,
    children,
    exited,
    free_port,
    serve,
    stop_gracefully,
    total_acked,
    wait_for,
)
from ._load_client import ID_PATTERN

CLIENTS = 3


def crash_seed() -> int:
    """``$STREAMD_CRASH_SEED``, else a fresh random seed."""
    value = os.environ.get("STREAMD_CRASH_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


@pytest.mark.parametrize(
    ("kills", "workers"),
    [
        pytest.param(3, 0, id="3-kills"),
        # The main process killed: its workers go with it (server.workers).
        pytest.param(3, 1, id="3-kills-with-a-worker"),
        pytest.param(25, 0, id="25-kills", marks=pytest.mark.slow),
    ],
)
def test_sigkill_loses_no_acknowledged_event(
    tmp_path: Path, processes: Processes, kills: int, workers: int
) -> None:
    seed = crash_seed()
    print(f"crash test: seed={seed} kills={kills} (replay with STREAMD_CRASH_SEED={seed})")
    rng = random.Random(seed)
    port = free_port()  # fixed for the whole test: clients reconnect to the same address
    data_dir = tmp_path / "data"
    started = time.monotonic()

    config = tmp_path / "streamd.toml"
    config.write_text(f"[server]\nworkers = {workers}\n")
    args = ["--config", str(config)]
    server = serve(processes, data_dir, port=port, name="streamd-0", args=args)
    clients = [
        LoadClient.start(
            processes, port=port, token_file=data_dir / "api-token", seed=seed, client=index
        )
        for index in range(CLIENTS)
    ]
    wait_for(
        lambda: total_acked(clients),
        timeout=20,
        what="a first acknowledged batch",
        context=lambda: _log_tail(server),
    )

    acked_at_kill = []
    for cycle in range(1, kills + 1):
        time.sleep(rng.uniform(0.2, 1.5))  # the kill moment (random, not a synchronisation)
        left = children(server.spawned.pid)
        server.spawned.popen.kill()
        assert server.spawned.wait(10) == -signal.SIGKILL
        acked_at_kill.append(total_acked(clients))
        # Its workers exit once they see the main process gone; until then they still
        # hold the port (under systemd, KillMode stops them with it).
        wait_for(partial(_all_exited, left), timeout=10, what="its workers to exit")
        server = _restart(processes, data_dir, port, cycle, args)

    # The senders must get through to the last incarnation, then stop after their request.
    before = total_acked(clients)
    wait_for(
        lambda: total_acked(clients) > before,
        timeout=20,
        what="an acknowledgement after the last restart",
        context=lambda: _log_tail(server),
    )
    summaries = [client.stop() for client in clients]
    stop_gracefully(server)

    acked = set().union(*(client.acked_ids() for client in clients))
    sent = [batch for client in clients for batch in client.sent_batches()]
    keys = check_journal(server.journal, acked)
    print(
        f"crash test: seed={seed} kills={kills} acked batches at each kill {acked_at_kill}; "
        f"{len(acked)} acknowledged ids, {len(keys)} journaled, "
        f"{time.monotonic() - started:.1f} s"
    )
    for summary in summaries:
        print(f"crash test: client {summary}")

    for summary in summaries:
        assert summary["violations"] == [], f"seed={seed}: {summary['violations'][:5]}"
        assert set(summary["statuses"]) <= {"200", "503"}, f"seed={seed}: {summary}"
        assert summary["acked_batches"] > 0, f"seed={seed}: a client got nothing through"
    assert acked_at_kill[-1] > acked_at_kill[0] or kills == 1, (
        f"seed={seed}: no batch was acknowledged after the first restart ({acked_at_kill})"
    )
    # A batch is atomic: after any crash, all of its events are journaled or none is.
    sent_ids = check_batches_atomic(sent, keys)
    # Nothing but what was sent: no invented or mangled keys.
    foreign = [key for key in keys if key not in sent_ids or not re.fullmatch(ID_PATTERN, key)]
    assert foreign == [], f"seed={seed}: keys nobody sent: {foreign[:10]}"


def _all_exited(pids: list[int]) -> bool:
    return all(exited(pid) for pid in pids)


def _restart(
    processes: Processes, data_dir: Path, port: int, cycle: int, args: list[str]
) -> Server:
    server = serve(processes, data_dir, port=port, name=f"streamd-{cycle}", args=args)
    assert "generated an API token" not in server.spawned.stdout()
    return server


def _log_tail(server: Server) -> str:
    return f"{server.spawned.name} stderr ends with:\n{server.spawned.stderr()[-3000:]}"
