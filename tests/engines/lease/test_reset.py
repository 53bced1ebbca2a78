"""`streamd journal pull-reset` when two receivers share a pull through a lease.

The position that counts is the shared one in the lease row: the next leader starts
there. A reset must clear it too, or the leader's restart reads the old position back
and the operator's reset is silently undone; and it must be refused on a receiver that
does not hold the lease (its leader would overwrite the shared position with its next
page)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from tests.engines._deploy import Receiver, metric, write_secrets
from tests.engines._postgres import PostgresServer
from tests.system._harness import Processes, streamd_argv, wait_for

from .conftest import journal_server

EVENTS = 2_000


def _lease(pg: PostgresServer, db: str) -> tuple[str, str | None, str | None] | None:
    """(holder, position, restart) of the live lease, or None."""
    try:
        with pg.connect(db) as conn:
            row = conn.execute(
                "SELECT holder, position, restart FROM streamd_pull_leases "
                "WHERE name = 'adobe-journal' AND expires_at > now()"
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    if row is None:
        return None
    holder, position, restart = row
    return (
        str(holder),
        None if position is None else str(position),
        (None if restart is None else str(restart)),
    )


def _pulled(receiver: Receiver) -> float:
    text = receiver.metrics()
    return sum(
        metric(text, "streamd_pull_events_total", pull="adobe-journal", outcome=o) or 0.0
        for o in ("new", "duplicate")
    )


def _reset(receiver: Receiver, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*streamd_argv(), "journal", "pull-reset", "adobe-journal", "--data-dir",
         str(receiver.data), *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_reset_clears_the_shared_position_and_only_the_leader_may_do_it(
    tmp_path: Path, processes: Processes, pg_server: PostgresServer
) -> None:
    db = "pullreset"
    dsn = pg_server.create_database(db)
    _, password = write_secrets(tmp_path)
    port, secret = journal_server(processes, tmp_path, events=EVENTS, seed=11, client_id="reset")

    def config(instance: str) -> str:
        return f"""
instance = "{instance}"

[[pulls]]
name = "adobe-journal"
url = "http://127.0.0.1:{port}/journal"
ims_url = "http://127.0.0.1:{port}/ims/token/v3"
org_id = "ORG@AdobeOrg"
client_id = "reset"
client_secret_file = "{secret}"
scope = "AdobeID,openid"
limit = 100
min_wait = 0.2
backoff_base = 0.1
backoff_cap = 1

[pulls.lease]
dsn = "{dsn}"
password_file = "{password}"
ttl = 3
"""

    receivers = {n: Receiver(processes, tmp_path, n, config(n)) for n in ("r1", "r2")}
    for receiver in receivers.values():
        receiver.start()
    lease = wait_for(
        lambda: (got := _lease(pg_server, db)) and got[1] is not None and got,
        timeout=30, what="a leader with a saved position",
    )  # fmt: skip
    assert lease
    leader = receivers[lease[0]]
    follower = receivers["r2" if lease[0] == "r1" else "r1"]
    wait_for(lambda: _pulled(leader) >= EVENTS, timeout=60, what="the whole journal pulled")
    caught_up = _lease(pg_server, db)
    assert caught_up is not None and caught_up[1] is not None
    before = _pulled(leader)

    # On the follower: refused, and nothing changed (the shared position is kept).
    refused = _reset(follower)
    assert refused.returncode == 1, refused.stdout
    assert f"receiver '{leader.name}' holds its lease" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _lease(pg_server, db) == caught_up

    # On the leader: done, and the leader starts over from the oldest event: it pulls
    # the whole journal again (every event a duplicate in its journal).
    done = _reset(leader)
    assert done.returncode == 0, done.stderr
    assert "cleared" in done.stdout
    wait_for(
        lambda: _pulled(leader) >= before + EVENTS,
        timeout=60,
        what="the journal pulled again from the oldest event",
        context=lambda: (
            f"pulled {_pulled(leader)} (before the reset {before}); lease {_lease(pg_server, db)}"
        ),
    )
    after = _lease(pg_server, db)
    assert after is not None and after[0] == leader.name  # kept its lease across the reset
    text = leader.metrics()
    assert (metric(text, "streamd_pull_events_total", pull="adobe-journal", outcome="new")
            or 0) == EVENTS  # fmt: skip
