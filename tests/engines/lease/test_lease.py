"""The pull lease on a real PostgreSQL: one holder at a time, the position shared,
handed over on expiry and at once on release, never written by a former holder."""

from __future__ import annotations

import itertools

import pytest
import trio

from streamd.ingest.lease import LeaseError, LeaseSettings, PgLease
from tests.engines._postgres import PASSWORD, PostgresServer

_names = itertools.count()


def leases(pg: PostgresServer, ttl: float = 3.0) -> tuple[PgLease, PgLease]:
    dsn = pg.dsn()
    name = f"journal-{next(_names)}"
    return tuple(  # type: ignore[return-value]
        PgLease(LeaseSettings(dsn, name, holder, password=PASSWORD, ttl=ttl))
        for holder in ("r1", "r2")
    )


async def test_one_holder_at_a_time_and_the_position_is_shared(pg_server: PostgresServer) -> None:
    r1, r2 = leases(pg_server)
    try:
        assert await r1.acquire() == (None, None)  # the first leader: no shared position
        assert await r2.acquire() is None  # r1 holds it
        assert await r1.save("p1")
        assert not await r2.save("p-from-r2")  # only the holder writes the position
        assert await r1.acquire() == ("p1", None)  # the holder keeps it, position and all
        assert await r1.renew() and not await r2.renew()
        await r1.release()  # a graceful stop hands over at once
        assert await r2.acquire() == ("p1", None)
        assert not await r1.renew() and not await r1.save("p-stale")
        assert await r2.acquire() == ("p1", None)
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_an_expired_lease_passes_to_the_next_and_the_old_holder_cannot_write(
    pg_server: PostgresServer,
) -> None:
    r1, r2 = leases(pg_server, ttl=3.0)
    try:
        assert await r1.acquire() == (None, None)
        assert await r1.save("p7")
        # r1 dies: no renewal. r2 gets it once it expired (PostgreSQL's clock), not before.
        assert await r2.acquire() is None
        with trio.fail_after(15):
            while (shared := await r2.acquire()) is None:
                await trio.sleep(0.2)
        assert shared == ("p7", None)
        assert not await r1.save("p8")  # the former holder's page is not recorded
        assert not await r1.renew()
        with pg_server.connect() as conn:
            rows = conn.execute(
                "SELECT holder, position FROM streamd_pull_leases WHERE name = %s",
                (r1.settings.name,),
            ).fetchall()
        assert rows == [("r2", "p7")]
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_an_unreachable_database_is_a_lease_error_with_the_reason(
    pg_server: PostgresServer,
) -> None:
    lease = PgLease(
        LeaseSettings(
            pg_server.dsn().replace(f"port={pg_server.port}", "port=9"),
            "journal-x",
            "r1",
            password=PASSWORD,
            connect_timeout=2,
        )
    )
    with pytest.raises(LeaseError, match="the pull lease's database: .*(refused|connect)"):
        await lease.acquire()
    await lease.aclose()


async def test_a_wrong_password_is_a_lease_error_not_a_traceback(pg_server: PostgresServer) -> None:
    lease = PgLease(LeaseSettings(pg_server.dsn(), "journal-y", "r1", password="wrong"))
    with pytest.raises(LeaseError, match="password authentication failed"):
        await lease.acquire()
    await lease.aclose()
