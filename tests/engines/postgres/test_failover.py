"""What docs/postgres.md promises is transient, tried against a real server: errors the
server raises mid-transaction (serialization failure, deadlock, disk full, read-only),
a role over its connection limit, and a failover from a primary to its promoted
standby through a two-host DSN. Each time: attempts fail, nothing is dead-lettered,
and everything arrives exactly once when the cause is gone."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio

from streamd.drain import open_drain
from streamd.drain.sinks.postgres import PostgresSettings, PostgresSink
from streamd.journal import Journal
from tests.drain.conftest import append, wait_until
from tests.engines._postgres import INSTALL_HINT, PASSWORD, PostgresServer, find_bin

from .conftest import Database, pg_spec

# Statement-level, so a sequence (not rolled back with the failed transaction) counts
# the failures: the first FAILURES INSERTs into the table raise ``code``.
_FAILING_TRIGGER = """
CREATE SEQUENCE streamd_fail_count;
CREATE FUNCTION streamd_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('streamd_fail_count') <= {failures} THEN
    RAISE EXCEPTION 'injected by the test' USING ERRCODE = '{code}';
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER streamd_fail BEFORE INSERT ON streamd_events
  FOR EACH STATEMENT EXECUTE FUNCTION streamd_fail();
"""


def _counts(rows: list[tuple[object, ...]]) -> dict[object, object]:
    return {key: n for key, n in rows}


@pytest.mark.parametrize(
    "code",
    [
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53100",  # disk_full
        "25006",  # read_only_sql_transaction (a standby after a failover)
    ],
)
async def test_server_errors_mid_transaction_are_retried(
    pg: Database, journal: Journal, code: str
) -> None:
    sink = PostgresSink(pg.settings())
    keys = [f"s{i:04d}" for i in range(300)]
    async with open_drain(journal, [pg_spec("pg", sink)]) as d:
        await append(journal, keys[:100])  # creates the table
        await wait_until(lambda: d.statistics()[0].cursor == 100, "the first part delivered")
        pg.sql(_FAILING_TRIGGER.format(failures=3, code=code))
        await append(journal, keys[100:])
        await wait_until(
            lambda: d.statistics()[0].cursor == 300, "everything after the failures", timeout=30
        )
        status = d.statistics()[0]
    assert status.failed_attempts >= 3
    assert status.dead_letters == 0
    assert (status.destination_new, status.destination_present) == (300, 0)
    rows = pg.sql("SELECT event_key, count(*) FROM streamd_events GROUP BY event_key")
    assert _counts(rows) == {key: 1 for key in keys}
    assert pg.sql("SELECT last_value FROM streamd_fail_count") >= [(4,)]  # the trigger ran


async def test_a_role_over_its_connection_limit_is_retried(pg: Database, journal: Journal) -> None:
    # Superusers are exempt from connection limits: the sink connects as its own role,
    # the owner of the test's database (so it may create the table).
    pg.sql(f"CREATE ROLE streamd_sink LOGIN PASSWORD '{PASSWORD}'")
    try:
        pg.sql(f'ALTER DATABASE "{pg.name}" OWNER TO streamd_sink')
        pg.sql("ALTER SCHEMA public OWNER TO streamd_sink")
        dsn = pg.dsn.replace("user=postgres", "user=streamd_sink")
        sink = PostgresSink(pg.settings(dsn=dsn))
        keys = [f"c{i:04d}" for i in range(200)]
        async with open_drain(journal, [pg_spec("pg", sink)]) as d:
            await append(journal, keys[:100])
            await wait_until(lambda: d.statistics()[0].cursor == 100, "the first part")
            pg.sql("ALTER ROLE streamd_sink CONNECTION LIMIT 0")
            pg.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = 'streamd_sink'"
            )
            await append(journal, keys[100:])
            refused = 'too many connections for role "streamd_sink"'
            await wait_until(
                lambda: refused in pg.server.log_tail(50), "a refused connection", timeout=30
            )
            assert d.statistics()[0].cursor == 100
            pg.sql("ALTER ROLE streamd_sink CONNECTION LIMIT -1")
            await wait_until(
                lambda: d.statistics()[0].cursor == 200, "everything after the limit", timeout=30
            )
            status = d.statistics()[0]
        assert status.failed_attempts >= 1 and status.dead_letters == 0
        rows = pg.sql("SELECT event_key, count(*) FROM streamd_events GROUP BY event_key")
        assert _counts(rows) == {key: 1 for key in keys}
    finally:
        pg.sql(f'ALTER DATABASE "{pg.name}" OWNER TO postgres')
        pg.sql("ALTER SCHEMA public OWNER TO pg_database_owner")
        pg.sql("REASSIGN OWNED BY streamd_sink TO postgres; DROP OWNED BY streamd_sink")
        pg.sql("DROP ROLE streamd_sink")


class _Standby(PostgresServer):
    """A streaming-replication standby of ``primary``, cloned with pg_basebackup."""

    def __init__(self, primary: PostgresServer) -> None:
        super().__init__()
        self.primary = primary

    def init(self) -> None:
        self._run("mkdir", "-p", str(self.socket_dir))
        self._run(
            "env", f"PGPASSWORD={PASSWORD}", _find("pg_basebackup"), "-h", "127.0.0.1",
            "-p", str(self.primary.port), "-U", "postgres", "-D", str(self.data),
            "-R", "-X", "stream", "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nunix_socket_directories = '{self.socket_dir}'\n")

    def promote(self) -> None:
        self._run(_find("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote")


def _find(name: str) -> str:
    found = find_bin(name)
    if found is None:
        pytest.fail(f"{name} not found ({INSTALL_HINT})")
    return found


def _wait_streaming(primary: PostgresServer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with primary.connect() as conn:
        while True:
            rows = conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            ).fetchone()
            if rows == (1,):
                return
            assert time.monotonic() < deadline, "the standby never streamed:\n" + (
                primary.log_tail()
            )
            time.sleep(0.05)


@pytest.fixture
def replicated() -> Iterator[tuple[PostgresServer, _Standby]]:
    """A primary and its synchronous standby: a COMMIT returns once the standby has
    flushed it, so a failover loses no committed row (docs/postgres.md)."""
    with PostgresServer() as primary:
        standby = _Standby(primary)
        with standby:
            _wait_streaming(primary)
            with primary.connect() as conn:
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                conn.execute("SELECT pg_reload_conf()")
            yield primary, standby


async def test_a_failover_to_the_promoted_standby_loses_nothing(
    replicated: tuple[PostgresServer, _Standby], journal: Journal
) -> None:
    primary, standby = replicated
    dsn = (
        f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} dbname=postgres "
        "user=postgres target_session_attrs=read-write"
    )
    sink = PostgresSink(PostgresSettings(dsn=dsn, password=PASSWORD, sink="pg",
                                         instance="receiver-a", connect_timeout=2.0))  # fmt: skip
    keys = [f"f{i:04d}" for i in range(600)]
    async with open_drain(journal, [pg_spec("pg", sink)]) as d:
        await append(journal, keys[:200])
        await wait_until(lambda: d.statistics()[0].cursor == 200, "the first part", timeout=30)
        await trio.to_thread.run_sync(primary.stop, "immediate")
        await append(journal, keys[200:400])
        await wait_until(
            lambda: d.statistics()[0].failed_attempts >= 1, "a failed attempt", timeout=30
        )
        # The standby is up but read-only: target_session_attrs=read-write passes over it.
        await trio.sleep(1)
        assert d.statistics()[0].cursor == 200
        await trio.to_thread.run_sync(standby.promote)
        await append(journal, keys[400:])
        await wait_until(
            lambda: d.statistics()[0].cursor == 600, "everything on the new primary", timeout=60
        )
        status = d.statistics()[0]
    assert status.dead_letters == 0
    with standby.connect() as conn:
        rows = conn.execute(
            "SELECT event_key, count(*) FROM streamd_events GROUP BY event_key"
        ).fetchall()
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert _counts(rows) == {key: 1 for key in keys}
