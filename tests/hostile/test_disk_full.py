"""A full disk, for real: the journal on a small tmpfs that a filler file takes over.

Two ways a disk is full for streamd: below the configured floor
(``journal.min_free_disk_mib``, checked before a batch is queued) and, with a floor of
0, the file system itself refusing the write (ENOSPC inside SQLite's commit). Either
way every POST is 503 + Retry-After (never a 4xx, never a 200 that is not durable),
``/readyz`` says why, and once space returns streamd takes deliveries again by
itself, with every acknowledged event in the journal exactly once.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.hostile._faults import MIB, Senders, admin_url, fill, readyz, tmpfs, wait_unready
from tests.hostile.conftest import scale
from tests.system._harness import (
    Processes,
    assert_no_traceback,
    check_batches_atomic,
    check_journal,
    serve,
    stop_gracefully,
    wait_for,
)

FAILING = r"journal commits are failing since \S+: database or disk is full \(SQLITE_FULL\)"
LOW_DISK = "free disk space is below journal.min_free_disk_mib"


@pytest.mark.parametrize(
    ("floor_mib", "problem"),
    [(0, FAILING), (8, LOW_DISK)],
    ids=["enospc-floor-0", "below-the-floor"],
)
def test_a_full_disk_is_503_then_200_by_itself_and_nothing_acknowledged_is_lost(
    tmp_path: Path, processes: Processes, floor_mib: int, problem: str
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rounds = scale(1, 5)
    print(f"disk full: seed={seed} floor={floor_mib} MiB rounds={rounds}")
    config = tmp_path / "streamd.toml"
    config.write_text(
        f"[journal]\nmin_free_disk_mib = {floor_mib}\nwal_max_mib = 4\ncommit_budget = 5.0\n"
    )
    with tmpfs(tmp_path / "disk", 64) as disk:
        server = serve(processes, disk / "data", args=["--config", str(config)])
        admin = admin_url(server)
        assert readyz(admin) == (True, [])
        senders = Senders(server.port, server.token(), seed, clients=2)
        try:
            wait_for(lambda: senders.acked_batches() >= 20, timeout=20, what="20 acks")
            for round_ in range(rounds):
                filler = disk / "filler"
                # Below the floor: leave half of it; floor 0: to the last byte.
                written = fill(filler, leave=floor_mib * MIB // 2)
                full_at = time.monotonic()
                found = wait_unready(admin, problem, timeout=30)
                unready_after = time.monotonic() - full_at
                # Every POST now gets 503 + Retry-After (the senders check each answer).
                senders.wait_answers(503, 20, timeout=30, what="20 answers of 503 while full")
                full = senders.statuses()
                filler.unlink()
                freed_at = time.monotonic()
                wait_for(lambda: readyz(admin)[0], timeout=30, what="/readyz ready again")
                ready_after = time.monotonic() - freed_at
                senders.wait_answers(200, 20, timeout=30, what="20 answers of 200 after")
                print(
                    f"round {round_}: filled {written / MIB:.1f} MiB; unready after "
                    f"{unready_after:.2f} s ({found!r}); answers while full {dict(full)}; "
                    f"ready {ready_after:.2f} s after space returned"
                )
        finally:
            senders.stop()
        statuses = senders.statuses()
        print(
            f"disk full: answers {dict(statuses)}, connection errors {dict(senders.errors())}, "
            f"slowest answer {senders.slowest():.2f} s"
        )
        assert senders.violations() == []
        assert set(statuses) == {200, 503}, statuses
        stop_gracefully(server)
        assert_no_traceback(server.spawned.stderr())
        acked = senders.acked_ids()
        keys = check_journal(server.journal, acked)
        check_batches_atomic(senders.sent_batches(), keys)
        print(f"disk full: {len(acked)} acknowledged ids, {len(keys)} journaled, each once")
