"""A file size limit (``RLIMIT_FSIZE``, systemd's ``LimitFSIZE=``) on the streamd process.

streamd starts under the limit through a wrapper that sets it and puts ``SIGXFSZ`` back
to its default action (which kills) before it execs streamd, as a unit would. A write
past the limit then fails with EFBIG (SQLite's "disk I/O error") only because streamd
ignores ``SIGXFSZ``, which CPython does at start-up; the process must survive it. While
the journal is at the limit every POST is 503 + Retry-After and ``/readyz`` says commits
fail; once the limit is raised (``prlimit`` on the live process) commits succeed again
by themselves, and after a restart every acknowledged event is in the journal once.
"""

from __future__ import annotations

import random
import resource
import signal
import sys
import time
from pathlib import Path

from tests.hostile._faults import MIB, Senders, admin_url, metric, readyz, wait_unready
from tests.hostile.conftest import scale
from tests.system._harness import (
    Processes,
    Server,
    assert_no_traceback,
    check_batches_atomic,
    check_journal,
    serve,
    stop_gracefully,
    streamd_argv,
    wait_for,
)

# Sets RLIMIT_FSIZE, restores SIGXFSZ's default action (a Python parent ignores it, and
# an ignored signal stays ignored across exec), then execs the rest of argv.
LIMITED = """
import os, resource, signal, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
os.execv(sys.argv[2], sys.argv[2:])
"""
FAILING = r"journal commits are failing since \S+: disk I/O error \(SQLITE_IOERR\w*\)"


def ignored_signals(pid: int) -> int:
    """The mask of signals the process ignores (``SigIgn`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn line for pid {pid}")


def test_a_file_size_limit_is_503_until_it_is_raised_and_nothing_acknowledged_is_lost(
    tmp_path: Path, processes: Processes
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rounds = scale(1, 4)
    limit = 4 * MIB
    print(f"fsize: seed={seed} limit={limit} bytes rounds={rounds}")
    data_dir = tmp_path / "data"
    journal = data_dir / "journal.db"
    config = tmp_path / "streamd.toml"
    config.write_text("[journal]\nwal_max_mib = 1\ncommit_budget = 5.0\n")
    argv = [sys.executable, "-c", LIMITED, str(limit), *streamd_argv(), "serve"]
    argv += ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    argv += ["--data-dir", str(data_dir), "--config", str(config)]
    server = Server(processes.spawn(argv, "streamd-limited"), data_dir)
    server.wait_ready()
    pid = server.spawned.pid
    assert resource.prlimit(pid, resource.RLIMIT_FSIZE)[0] == limit
    assert ignored_signals(pid) & (1 << (signal.SIGXFSZ - 1)), "SIGXFSZ would kill streamd"
    admin, admin_token = admin_url(server), (data_dir / "admin-token").read_text().strip()
    senders = Senders(server.port, server.token(), seed, clients=2)
    try:
        for round_ in range(rounds):
            found = wait_unready(admin, FAILING, timeout=60)
            senders.wait_answers(503, 1, timeout=30, what="a 503 at the file size limit")
            if round_ == 0:
                # A fresh journal: the WAL reaches the limit first (it grows under load
                # between checkpoints); commits succeed again by themselves once a
                # checkpoint lets the WAL start over inside the size it has. (Later
                # rounds start with a journal file near the old limit: they may not.)
                senders.wait_answers(200, 20, timeout=30, what="200s after a checkpoint")
            recovered = senders.statuses()
            # Then the journal file itself reaches it: checkpoints fail, the WAL can no
            # longer start over, and every commit fails until the limit changes.
            wait_for(
                lambda: journal.stat().st_size > limit - 256 * 1024,  # noqa: B023
                timeout=60,
                what="the journal file to reach the limit",
            )
            wait_unready(admin, FAILING, timeout=60)
            senders.wait_answers(503, 20, timeout=60, what="503s with the journal at the limit")
            assert server.spawned.alive(), "streamd died at the file size limit (SIGXFSZ?)"
            assert not readyz(admin)[0]
            sizes = {p.name: p.stat().st_size for p in data_dir.glob("journal.db*")}
            stuck = senders.statuses()
            limit *= 2  # the operator raises it
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            raised_at = time.monotonic()
            wait_for(lambda: readyz(admin)[0], timeout=30, what="/readyz ready again")
            ready_after = time.monotonic() - raised_at
            senders.wait_answers(200, 20, timeout=30, what="200s once the limit is raised")
            print(
                f"round {round_}: {found!r}; answers after the first failure "
                f"{dict(recovered)}; stuck with files {sizes}, answers {dict(stuck)}; ready "
                f"{ready_after:.2f} s after the limit was raised to {limit} bytes"
            )
    finally:
        senders.stop()
    statuses = senders.statuses()
    failures = metric(admin, admin_token, "streamd_journal_commit_failures_total")
    print(
        f"fsize: answers {dict(statuses)}; {failures:.0f} failed commits and probes; "
        f"slowest answer {senders.slowest():.2f} s"
    )
    assert senders.violations() == []
    assert set(statuses) == {200, 503}, statuses
    stop_gracefully(server)
    assert_no_traceback(server.spawned.stderr())
    # A restart without the limit opens the same journal; nothing acknowledged is lost.
    again = serve(processes, data_dir, name="streamd-again", args=["--config", str(config)])
    assert readyz(admin_url(again)) == (True, [])
    stop_gracefully(again)
    acked = senders.acked_ids()
    keys = check_journal(again.journal, acked)
    check_batches_atomic(senders.sent_batches(), keys)
    print(f"fsize: {len(acked)} acknowledged ids, {len(keys)} journaled, each once")
