"""Another process holds the journal's write lock (``BEGIN IMMEDIATE`` from the test).

While it lasts every POST is 503 + Retry-After, ``/readyz`` says commits fail and why,
and no ``WATCHDOG=1`` goes out (a failed commit is no progress: systemd would restart
a daemon whose commits keep failing under load). Once released: 200, ready, pings.
A datagram socket of the test plays systemd's notify socket.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from tests.hostile._faults import Senders, admin_url, readyz, wait_unready
from tests.hostile.conftest import scale
from tests.system._harness import (
    Processes,
    Server,
    assert_no_traceback,
    check_batches_atomic,
    check_journal,
    clean_env,
    stop_gracefully,
    streamd_argv,
    wait_for,
)
from tests.system.test_systemd import NotifySocket

LOCKED = r"journal commits are failing since \S+: database is locked \(SQLITE_BUSY\)"


def test_a_held_write_lock_is_503_unready_and_withholds_the_watchdog(
    tmp_path: Path, processes: Processes
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    hold = scale(12, 45)
    print(f"locked: seed={seed} hold={hold} s")
    notify = NotifySocket(tmp_path / "notify")
    try:
        data_dir = tmp_path / "data"
        config = tmp_path / "streamd.toml"
        config.write_text("[journal]\ncommit_budget = 2.0\n")
        argv = [*streamd_argv(), "serve", "--listen", "127.0.0.1:0"]
        argv += ["--admin-listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
        argv += ["--config", str(config)]
        env = {**clean_env(), "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
        server = Server(processes.spawn(argv, "streamd", env=env), data_dir)
        server.wait_ready()
        admin = admin_url(server)
        senders = Senders(server.port, server.token(), seed, clients=3)
        try:
            wait_for(lambda: senders.acked_batches() >= 20, timeout=20, what="20 acks")
            wait_for(lambda: len(notify.having("WATCHDOG")) >= 2, timeout=10, what="pings")

            blocker = sqlite3.connect(server.journal, isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")
                locked_at = time.monotonic()
                # Written a tick after the last ping: any ping seen later is a resumption.
                server.wait_log("withholding watchdog pings", timeout=20)
                withheld_at = time.monotonic()
                found = wait_unready(admin, LOCKED, timeout=20)
                senders.wait_answers(503, 10, timeout=30, what="503s while locked")
                wait_for(
                    lambda: time.monotonic() >= locked_at + hold,  # the fault lasts `hold` s
                    timeout=hold + 5,
                    what="the end of the hold",
                )
                during = senders.statuses()
                still = readyz(admin)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            released_at = time.monotonic()
            pings_while_locked = [
                t for t, _ in notify.having("WATCHDOG", since=withheld_at) if t <= released_at
            ]
            wait_for(lambda: readyz(admin)[0], timeout=20, what="/readyz ready again")
            ready_after = time.monotonic() - released_at
            wait_for(
                lambda: notify.having("WATCHDOG", since=released_at),
                timeout=20,
                what="pings again once commits succeed",
            )
            senders.wait_answers(200, 20, timeout=30, what="200s after the release")
        finally:
            senders.stop()
        statuses = senders.statuses()
        last_ping = max(t for t, _ in notify.having("WATCHDOG") if t <= withheld_at)
        print(
            f"locked {released_at - locked_at:.1f} s: {found!r}; last ping "
            f"{last_ping - locked_at:.1f} s after locking; pings while locked after that: "
            f"{len(pings_while_locked)}; answers up to the release {dict(during)}; ready "
            f"{ready_after:.2f} s after the release; all answers {dict(statuses)}; slowest "
            f"answer {senders.slowest():.2f} s"
        )
        assert pings_while_locked == [], "WATCHDOG=1 while every commit failed"
        assert still[0] is False and any("database is locked" in p for p in still[1]), still
        assert senders.violations() == []
        assert set(statuses) == {200, 503}, statuses
        stop_gracefully(server)
        assert_no_traceback(server.spawned.stderr())
        keys = check_journal(server.journal, senders.acked_ids())
        check_batches_atomic(senders.sent_batches(), keys)
    finally:
        notify.close()
