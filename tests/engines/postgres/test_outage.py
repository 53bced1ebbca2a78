"""PostgreSQL stopped mid-stream: the sink's attempts fail as transient, the journal
keeps the events, and after the restart every one arrives exactly once."""

from __future__ import annotations

import pytest
import trio

from streamd.drain import RetrySettings, open_drain
from streamd.drain.sinks.postgres import PostgresSink
from streamd.journal import Journal
from tests.drain.conftest import append, wait_until

from .conftest import Database, pg_spec

# Pauses after 3 failures and probes; an outage never dead-letters (as the marketo preset).
PATIENT = RetrySettings(
    max_attempts=0, backoff_base=0.05, backoff_cap=0.2, jitter=0.0, pause_after=3,
    probe_interval=0.5,
)  # fmt: skip


async def _outage(pg: Database, journal: Journal, seconds: float) -> None:
    sink = PostgresSink(pg.settings())
    keys = [f"o{i:05d}" for i in range(600)]
    async with open_drain(journal, [pg_spec("pg", sink, batch_size=50, retry=PATIENT)]) as d:
        await append(journal, keys[:200])
        await wait_until(lambda: d.statistics()[0].cursor == 200, "the first part delivered")
        await trio.to_thread.run_sync(pg.server.stop, "fast")
        try:
            await append(journal, keys[200:400])
            await wait_until(
                lambda: d.statistics()[0].failed_attempts > 0, "a failed attempt", timeout=30
            )
            status = d.statistics()[0]
            assert status.cursor == 200 and status.lag_events == 200
            await trio.sleep(seconds)  # the outage itself, not a wait for a condition
            await append(journal, keys[400:])
        finally:
            await trio.to_thread.run_sync(pg.server.start)
        await wait_until(
            lambda: d.statistics()[0].cursor == 600, "everything after the restart", timeout=60
        )
        status = d.statistics()[0]
        assert status.dead_letters == 0
        assert (status.destination_new, status.destination_present) == (600, 0)
    rows = dict(pg.sql("SELECT event_key, count(*) FROM streamd_events GROUP BY event_key"))
    assert rows == {key: 1 for key in keys}


async def test_a_short_outage_loses_nothing(pg: Database, journal: Journal) -> None:
    await _outage(pg, journal, 3)


@pytest.mark.slow
async def test_a_minute_long_outage_loses_nothing(pg: Database, journal: Journal) -> None:
    await _outage(pg, journal, 60)
