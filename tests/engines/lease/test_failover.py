"""Pull failover: two receivers with the same pull source and a lease in PostgreSQL,
draining into one PostgreSQL table. The leader is SIGKILLed in the middle of the
journal; the other takes over once the lease expires, resumes from the shared
position, and the table ends with every journal event exactly once (the dead leader's
undrained events arrive when it is back)."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import psycopg

from streamd.emit.journal_api import JournalApi
from tests.engines._deploy import write_secrets
from tests.engines._postgres import PostgresServer
from tests.system._harness import Processes, Server, serve, wait_for

from .conftest import journal_server

EVENTS = 30_000
SEED = 5
TTL = 3.0


def _journaled(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _holder(pg: PostgresServer, db: str) -> str | None:
    try:
        with pg.connect(db) as conn:
            row = conn.execute(
                "SELECT holder FROM streamd_pull_leases WHERE name = 'adobe-journal' "
                "AND expires_at > now()"
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None else str(row[0])


def _rows(pg: PostgresServer, db: str) -> list[str]:
    try:
        with pg.connect(db) as conn:
            return [str(r[0]) for r in conn.execute("SELECT event_key FROM streamd_events")]
    except psycopg.errors.UndefinedTable:
        return []


def test_the_other_receiver_takes_over_the_pull_and_nothing_is_lost_or_doubled(
    tmp_path: Path, processes: Processes, pg_server: PostgresServer
) -> None:
    db = "failover"
    dsn = pg_server.create_database(db)
    _, password = write_secrets(tmp_path)
    port, secret = journal_server(
        processes, tmp_path, events=EVENTS, seed=SEED, client_id="failover"
    )

    def config(instance: str) -> Path:
        path = tmp_path / f"{instance}.toml"
        path.write_text(
            f"""
instance = "{instance}"

[[pulls]]
name = "adobe-journal"
url = "http://127.0.0.1:{port}/journal"
ims_url = "http://127.0.0.1:{port}/ims/token/v3"
org_id = "ORG@AdobeOrg"
client_id = "failover"
client_secret_file = "{secret}"
scope = "AdobeID,openid"
limit = 100
min_wait = 0.2
backoff_base = 0.1
backoff_cap = 1

[pulls.lease]
dsn = "{dsn}"
password_file = "{password}"
ttl = {TTL}

[[sinks]]
name = "warehouse"
kind = "postgres"

[sinks.postgres]
dsn = "{dsn}"
password_file = "{password}"
"""
        )
        return path

    def start(instance: str) -> Server:
        return serve(processes, tmp_path / instance, args=["--config", str(config(instance))],
                     name=f"streamd-{instance}-{time.monotonic_ns()}")  # fmt: skip

    servers = {"r1": start("r1"), "r2": start("r2")}
    leader = wait_for(lambda: _holder(pg_server, db), timeout=30, what="a leader")
    assert leader is not None
    follower = "r2" if leader == "r1" else "r1"
    wait_for(
        lambda: _journaled(tmp_path / leader / "journal.db") > 3000,
        timeout=60,
        what="the leader's pull under way",
        context=lambda: servers[leader].spawned.stderr()[-2000:],
    )
    servers[leader].spawned.popen.kill()
    assert servers[leader].spawned.wait(10) == -signal.SIGKILL
    killed_at = time.monotonic()
    at_kill = _journaled(tmp_path / leader / "journal.db")
    assert at_kill < EVENTS, "the leader pulled everything before it was killed: no failover"
    wait_for(lambda: _holder(pg_server, db) == follower, timeout=30, what="the takeover",
             context=lambda: servers[follower].spawned.stderr()[-2000:])  # fmt: skip
    takeover = time.monotonic() - killed_at
    # The dead leader comes back as a follower: what it journaled and had not drained
    # reaches the table now.
    servers[leader] = start(leader)
    api = JournalApi(seed=SEED, initial=EVENTS)
    wanted = {api.event(i)["id"] for i in range(EVENTS)}
    wait_for(
        lambda: len(_rows(pg_server, db)) >= EVENTS,
        timeout=120,
        what=f"all {EVENTS} journal events in the table",
        context=lambda: servers[follower].spawned.stderr()[-2000:],
    )
    rows = _rows(pg_server, db)
    assert len(rows) == len(set(rows)) == EVENTS
    assert set(rows) == wanted
    pulled = {name: _journaled(tmp_path / name / "journal.db") for name in ("r1", "r2")}
    print(
        f"pull failover: leader {leader} killed after journaling {at_kill} events; "
        f"{follower} held the lease {takeover:.1f} s later (ttl {TTL:g} s); journaled by "
        f"r1 {pulled['r1']}, r2 {pulled['r2']} (their sum minus {EVENTS}: pulled twice)"
    )
    assert pulled[follower] > 0 and pulled[leader] >= at_kill
