"""The pull source under SIGKILL: a real ``streamd serve`` pulls from a real emulator
process (``streamd emit --journal-server``, which is also the IMS token endpoint) and
is killed at random moments while it pages through the journal.

After the last restart every event of the journal must be journaled exactly once, in
journal order, and no page may have been journaled twice: the position is saved in the
transaction of the page's events, so a restart resumes exactly after the last committed
page (the deliveries of the pull source report no duplicates at all).
"""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from streamd.emit.journal_api import JournalApi, position

from ._harness import Processes, Server, free_port, serve, stop_gracefully, streamd_argv, wait_for
from .test_crash import crash_seed

EVENTS_PER_KILL = 15_000  # enough pages that each kill lands mid-pull
SEED = 11
SECRET = "pull-crash-secret-0123456789"


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet


@pytest.mark.parametrize(
    "kills",
    [pytest.param(3, id="3-kills"), pytest.param(20, id="20-kills", marks=pytest.mark.slow)],
)
def test_sigkill_while_pulling_loses_and_repeats_nothing(
    tmp_path: Path, processes: Processes, kills: int
) -> None:
    events = EVENTS_PER_KILL * kills
    seed = crash_seed()
    rng = random.Random(seed)
    print(f"pull crash test: seed={seed} kills={kills} (replay with STREAMD_CRASH_SEED={seed})")
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    port = free_port()
    emulator = processes.spawn(
        [
            *streamd_argv(), "emit", "--journal-server", "--listen", f"127.0.0.1:{port}",
            "--seed", str(SEED), "--journal-events", str(events),
            "--client-id", "crash-client", "--client-secret-file", str(secret),
            "--journal-org-id", "ORG@AdobeOrg",
        ],
        "journal-server",
    )  # fmt: skip
    wait_for(
        lambda: "token endpoint ready" in emulator.stdout(),
        timeout=20,
        what="the journal server",
        context=emulator.stderr,
    )
    config = tmp_path / "streamd.toml"
    config.write_text(
        f"""
[[pulls]]
name = "adobe-journal"
url = "http://127.0.0.1:{port}/journal"
ims_url = "http://127.0.0.1:{port}/ims/token/v3"
org_id = "ORG@AdobeOrg"
client_id = "crash-client"
client_secret_file = "{secret}"
scope = "AdobeID,openid"
limit = 250
min_wait = 0.2
backoff_base = 0.1
backoff_cap = 1
"""
    )
    data_dir = tmp_path / "data"
    args = ["--config", str(config)]
    server = serve(processes, data_dir, args=args, name="streamd-0")
    at_kill: list[int] = []
    for cycle in range(1, kills + 1):
        wait_for(
            lambda: _count(data_dir / "journal.db") > (at_kill[-1] if at_kill else 0),
            timeout=30,
            what="progress of the pull",
            context=lambda s=server: s.spawned.stderr()[-2000:],  # type: ignore[misc]
        )
        if _count(data_dir / "journal.db") >= events:
            break  # pulled everything already: nothing left to interrupt
        server.spawned.popen.kill()
        assert server.spawned.wait(10) == -signal.SIGKILL
        at_kill.append(_count(data_dir / "journal.db"))
        server = serve(processes, data_dir, args=args, name=f"streamd-{cycle}")
        # Kill after a random moment of pulling: short, so that several kills land mid-way.
        time.sleep(rng.uniform(0.05, 0.6))
    wait_for(
        lambda: _count(data_dir / "journal.db") >= events,
        timeout=120,
        what=f"all {events} events pulled",
        context=lambda: server.spawned.stderr()[-2000:],
    )
    _settle(server, events)
    stop_gracefully(server)
    print(f"pull crash test: seed={seed} events journaled at each kill: {at_kill}")
    assert len(at_kill) >= min(kills, 3), f"the pull finished before the kills: {at_kill}"
    assert any(0 < n < events for n in at_kill), f"no kill landed mid-pull: {at_kill}"

    api = JournalApi(seed=SEED, initial=events)
    with sqlite3.connect(server.journal) as conn:
        keys = [r[0] for r in conn.execute("SELECT event_key FROM events ORDER BY seq")]
        deliveries = conn.execute(
            "SELECT count(*), sum(events), sum(duplicates) FROM deliveries "
            "WHERE source = 'adobe-journal'"
        ).fetchone()
        saved = conn.execute("SELECT position, pages, events FROM pull_positions").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert keys == [api.event(i)["id"] for i in range(events)]
    # No page journaled twice: every delivery of the pull brought only new events.
    assert deliveries[1] == events and deliveries[2] == 0, deliveries
    assert saved == [(position(events - 1), deliveries[0], events)]


def _settle(server: Server, events: int) -> None:
    """Wait until the pull logged that it caught up (its last page is committed)."""
    wait_for(
        lambda: re.search(r"caught up at position p0*" + str(events - 1), server.spawned.stderr()),
        timeout=30,
        what="the pull to catch up",
        context=lambda: server.spawned.stderr()[-2000:],
    )
