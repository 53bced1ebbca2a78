"""The postgres sink against a real PostgreSQL 15: rows, dedup by key, dead letters,
the table's layout, errors."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
import trio

from streamd.core import format_utc
from streamd.drain import DrainEvent, Kind, open_drain
from streamd.drain.sinks.postgres import PostgresSink, timestamp
from streamd.journal import Batch, Journal, utc_now
from tests.drain.conftest import record, wait_until

from .conftest import Database, append_fixtures, journal_rows, pg_spec


def event(n: int, **kw: object) -> DrainEvent:
    values: dict[str, object] = {
        "seq": n, "key": f"key-{n:06d}", "stream": "activity",
        "type": "com.adobe.platform.marketo.activity.standard.visitwebpage",
        "munchkin_id": "123-ABC-456", "activity_type_id": 1, "source": "events",
        "occurred_at": "2026-05-01T10:00:00.000Z", "received_at": "2026-05-01T10:00:01.500Z",
        "raw": json.dumps({"id": f"key-{n:06d}", "n": n}), "lead_id": 1000 + n,
    }  # fmt: skip
    values.update(kw)
    return DrainEvent(**values)  # type: ignore[arg-type]


def keys_in(pg: Database, table: str = "streamd_events") -> dict[str, int]:
    """event_key -> how many rows hold it."""
    return dict(pg.sql(f"SELECT event_key, count(*) FROM {table} GROUP BY event_key"))


def dead_letters(journal: Journal) -> dict[str, str]:
    conn = sqlite3.connect(journal.path)
    try:
        return dict(conn.execute("SELECT event_key, reason FROM dead_letters"))
    finally:
        conn.close()


async def test_every_column_is_the_journals(pg: Database, journal: Journal) -> None:
    total = await append_fixtures(journal)
    sink = PostgresSink(pg.settings())
    async with open_drain(journal, [pg_spec("pg", sink)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == total, "all delivered")
        status = d.statistics()[0]
    assert (status.destination_new, status.destination_present) == (total, 0)
    expected = journal_rows(journal)
    rows = pg.sql(
        "SELECT event_key, seq, stream, type, munchkin_id, activity_type_id, lead_id, "
        "occurred_at, received_at, source, event, instance, inserted_at FROM streamd_events"
    )
    assert len(rows) == len(expected) == total
    for (
        key,
        seq,
        stream,
        typ,
        munchkin,
        atid,
        lead,
        occurred,
        received,
        source,
        ev,
        inst,
        ins,
    ) in rows:
        j_seq, j_stream, j_type, j_munchkin, j_atid, j_lead, j_occ, j_rec, j_source, raw = expected[
            key
        ]
        assert (seq, stream, typ, munchkin, atid, lead, source) == (
            j_seq, j_stream, j_type, j_munchkin, j_atid, j_lead, j_source,
        )  # fmt: skip
        assert (None if occurred is None else format_utc(occurred)) == j_occ
        assert format_utc(received) == j_rec
        assert ev == json.loads(raw)  # jsonb: the same JSON value as received
        assert inst == "receiver-a"
        assert isinstance(ins, datetime)
    # The fixtures cover a nullable column both ways (audit events have no lead).
    assert {r[6] is None for r in rows} == {True, False}
    assert {r[2] for r in rows} >= {"activity", "audit"}


async def test_a_redelivery_adds_nothing_and_counts_present(pg: Database) -> None:
    sink = PostgresSink(pg.settings())
    batch = [event(n) for n in range(1, 21)]
    first = await sink.deliver(batch)
    again = await sink.deliver(batch)
    overlap = await sink.deliver([event(n) for n in range(15, 31)])
    await sink.aclose()
    assert (first.kind, first.present) == (Kind.CONFIRMED, 0)
    assert (again.kind, again.present, again.rejected) == (Kind.CONFIRMED, 20, ())
    assert (overlap.kind, overlap.present) == (Kind.CONFIRMED, 6)
    assert keys_in(pg) == {f"key-{n:06d}": 1 for n in range(1, 31)}


async def test_two_receivers_overlapping_concurrently_insert_each_key_once(pg: Database) -> None:
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    keys = list(range(1, 2001))
    sinks = {
        name: PostgresSink(pg.settings(instance=name, sink=f"pg-{name}")) for name in ("a", "b")
    }
    new = {"a": 0, "b": 0}
    present = {"a": 0, "b": 0}

    async def receiver(name: str) -> None:
        # Each receiver sees every key, in its own batches and order (its own seqs).
        order = keys[:]
        rng.shuffle(order)
        events = [event(k, seq=i + 1) for i, k in enumerate(order)]
        async with trio.open_nursery() as workers:
            for w in range(3):
                workers.start_soon(worker, name, events[w::3])

    async def worker(name: str, events: Sequence[DrainEvent]) -> None:
        for i in range(0, len(events), 97):
            batch = events[i : i + 97]
            for _ in range(20):  # a deadlock or serialization failure is transient
                result = await sinks[name].deliver(batch)
                if result.kind is Kind.CONFIRMED:
                    break
            assert result.kind is Kind.CONFIRMED, result
            assert result.present is not None
            present[name] += result.present
            new[name] += len(batch) - result.present

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver, "a")
        nursery.start_soon(receiver, "b")
    for sink in sinks.values():
        await sink.aclose()
    assert keys_in(pg) == {f"key-{k:06d}": 1 for k in keys}
    by_instance = dict(pg.sql("SELECT instance, count(*) FROM streamd_events GROUP BY instance"))
    assert new["a"] + new["b"] == len(keys)
    assert present["a"] + present["b"] == len(keys)
    assert by_instance == {name: n for name, n in new.items() if n}


async def test_a_nul_escape_is_a_dead_letter_alone(pg: Database, journal: Journal) -> None:
    records = [record(f"n{i}") for i in range(5)]
    bad = record("nul")
    bad = type(bad)(**{**{f: getattr(bad, f) for f in bad.__struct_fields__},
                       "raw": '{"id": "nul", "text": "a\\u0000b"}'})  # fmt: skip
    await journal.append(Batch("events", utc_now(), "batch", [*records[:2], bad, *records[2:]]))
    sink = PostgresSink(pg.settings())
    async with open_drain(journal, [pg_spec("pg", sink, batch_size=10)]) as d:
        await wait_until(lambda: d.statistics()[0].cursor == 6, "confirmed")
        assert d.statistics()[0].dead_letters == 1
    assert keys_in(pg) == {f"n{i}": 1 for i in range(5)}
    letters = dead_letters(journal)
    assert list(letters) == ["nul"]
    assert "unsupported Unicode escape sequence" in letters["nul"]
    assert "22P05" in letters["nul"]


async def test_a_check_constraint_refuses_one_event(pg: Database) -> None:
    sink = PostgresSink(pg.settings())
    assert (await sink.deliver([event(1)])).kind is Kind.CONFIRMED  # creates the table
    pg.sql("ALTER TABLE streamd_events ADD CONSTRAINT no_bots CHECK (lead_id <> 666)")
    result = await sink.deliver([event(2), event(3, lead_id=666), event(4), event(1)])
    await sink.aclose()
    assert result.kind is Kind.CONFIRMED
    assert result.present == 1  # event 1 was there
    assert [seq for seq, _ in result.rejected] == [3]
    assert "no_bots" in result.rejected[0][1] and "23514" in result.rejected[0][1]
    assert keys_in(pg) == {f"key-{n:06d}": 1 for n in (1, 2, 4)}


async def test_a_deferred_constraint_refuses_one_event_not_the_batch(pg: Database) -> None:
    # Checked only at COMMIT: the set-based insert and then the row-by-row one would both
    # fail there, for every event, again and again. The row-by-row path checks
    # deferrable constraints at each statement, so the offender is found.
    sink = PostgresSink(pg.settings())
    assert (await sink.deliver([event(1)])).kind is Kind.CONFIRMED  # creates the table
    pg.sql(
        "ALTER TABLE streamd_events ADD CONSTRAINT one_per_lead UNIQUE (lead_id) "
        "DEFERRABLE INITIALLY DEFERRED"
    )
    result = await sink.deliver([event(2), event(3, lead_id=1002), event(4)])
    await sink.aclose()
    assert result.kind is Kind.CONFIRMED
    assert [seq for seq, _ in result.rejected] == [3]
    assert "one_per_lead" in result.rejected[0][1] and "23505" in result.rejected[0][1]
    assert keys_in(pg) == {"key-000001": 1, "key-000002": 1, "key-000004": 1}


async def test_times_become_the_same_instants(pg: Database) -> None:
    # The server's zone is not UTC: a zone-less time must still mean UTC (the journal's rule).
    pg.sql(f"ALTER DATABASE \"{pg.name}\" SET timezone = 'America/New_York'")
    cases = {
        1: ("2026-05-01T10:00:00.000Z", datetime(2026, 5, 1, 10, tzinfo=UTC)),
        2: (None, None),
        3: ("2024-07-11 13:20:42.755", datetime(2024, 7, 11, 13, 20, 42, 755000, tzinfo=UTC)),
        4: ("2024-07-11T13:20:42-5:00", datetime(2024, 7, 11, 18, 20, 42, tzinfo=UTC)),
        5: ("0001-01-01T00:00:00.000Z", datetime(1, 1, 1, tzinfo=UTC)),
        6: ("9999-12-31T23:59:59.999Z", datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        7: ("not a time", None),
    }
    sink = PostgresSink(pg.settings())
    result = await sink.deliver([event(n, occurred_at=text) for n, (text, _) in cases.items()])
    await sink.aclose()
    assert (result.kind, result.rejected) == (Kind.CONFIRMED, ())
    got = dict(pg.sql("SELECT seq, occurred_at FROM streamd_events"))
    assert got == {n: want for n, (_, want) in cases.items()}
    assert timestamp("2026-05-01T10:00:00.000Z") == "2026-05-01T10:00:00.000Z"


async def test_odd_text_survives_copy(pg: Database) -> None:
    # A line break and a tab between tokens, escapes and backslashes inside strings.
    raw = '{"id": "x",\n\t"s": "tab\\tnl\\nback\\\\slash \\"q\\" é 😀"}'
    odd = event(1, key="k\twith\\odd\nchars", raw=raw, type=None,
                munchkin_id=None, activity_type_id=None, lead_id=None)  # fmt: skip
    sink = PostgresSink(pg.settings())
    result = await sink.deliver([odd, event(2)])
    await sink.aclose()
    assert (result.kind, result.rejected) == (Kind.CONFIRMED, ())
    row = pg.sql("SELECT event_key, event, type, lead_id FROM streamd_events WHERE seq = 1")[0]
    assert row == ("k\twith\\odd\nchars", json.loads(raw), None, None)


WRONG_TABLE = """CREATE TABLE streamd_events (
    event_key text, stream text, type text, source text, munchkin_id text,
    activity_type_id integer, lead_id integer, occurred_at timestamp, received_at timestamptz,
    event jsonb, seq bigint, owner_team text NOT NULL
)"""


async def test_a_wrong_table_with_manage_table_false_is_gone(
    pg: Database, journal: Journal
) -> None:
    pg.sql(WRONG_TABLE)
    sink = PostgresSink(pg.settings(manage_table=False))
    result = await sink.deliver([event(1)])
    assert result.kind is Kind.GONE
    assert result.reason == (
        "table streamd_events does not fit (manage_table = false): missing columns: instance; "
        "column lead_id is integer (needs bigint or numeric); "
        "column occurred_at is timestamp without time zone (needs timestamp with time zone); "
        "column owner_team is NOT NULL without a default (streamd never sets it); "
        "no unique index or constraint on (event_key) alone"
    )
    # Through the drain: the sink is disabled with that reason, the events wait.
    await journal.append(Batch("events", utc_now(), "batch", [record("g1")]))
    async with open_drain(
        journal, [pg_spec("pg", PostgresSink(pg.settings(manage_table=False)))]
    ) as d:
        await wait_until(lambda: d.statistics()[0].state == "disabled", "disabled")
        assert d.statistics()[0].cursor == 0
        assert "missing columns: instance" in (d.statistics()[0].last_error or "")
    assert pg.sql("SELECT count(*) FROM streamd_events") == [(0,)]


async def test_a_missing_table_with_manage_table_false_is_gone(pg: Database) -> None:
    sink = PostgresSink(pg.settings(manage_table=False, table="marketing.events"))
    result = await sink.deliver([event(1)])
    assert (result.kind, result.reason) == (
        Kind.GONE,
        "table marketing.events does not fit (manage_table = false): "
        "schema marketing does not exist",
    )


async def test_a_fitting_table_of_the_operators_is_used_as_it_is(pg: Database) -> None:
    # json (not jsonb) keeps the text as received, \u0000 included; varchar; no inserted_at.
    pg.sql(
        "CREATE TABLE evts (event_key varchar(100) UNIQUE, stream text, type text, source text, "
        "munchkin_id text, activity_type_id bigint, lead_id bigint, occurred_at timestamptz, "
        "received_at timestamptz, event json, instance text, seq bigint, extra text)"
    )
    sink = PostgresSink(pg.settings(manage_table=False, table="evts"))
    raw = '{"id": "key-000001",  "v": "a\\u0000b"}'
    result = await sink.deliver([event(1, raw=raw), event(2)])
    await sink.aclose()
    assert (result.kind, result.rejected, result.present) == (Kind.CONFIRMED, (), 0)
    assert pg.sql("SELECT event::text FROM evts WHERE seq = 1") == [(raw,)]


async def test_manage_table_adds_missing_columns_and_the_unique_index(pg: Database) -> None:
    pg.sql("CREATE TABLE streamd_events (event_key text, stream text, legacy_note text)")
    pg.sql("INSERT INTO streamd_events VALUES ('old', 'activity', 'kept')")
    sink = PostgresSink(pg.settings())
    first = await sink.deliver([event(1), event(2)])
    again = await sink.deliver([event(2)])
    await sink.aclose()
    assert (first.kind, first.present, again.present) == (Kind.CONFIRMED, 0, 1)
    columns = {
        name: typ
        for name, typ in pg.sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'streamd_events'"
        )
    }
    assert columns["occurred_at"] == "timestamp with time zone"
    assert columns["event"] == "jsonb"
    assert columns["inserted_at"] == "timestamp with time zone"
    assert columns["legacy_note"] == "text"
    assert keys_in(pg) == {"old": 1, "key-000001": 1, "key-000002": 1}


async def test_a_schema_qualified_table_is_created_with_its_schema(pg: Database) -> None:
    sink = PostgresSink(pg.settings(table="marketing.events"))
    result = await sink.deliver([event(1), event(2)])
    await sink.aclose()
    assert result.kind is Kind.CONFIRMED
    assert keys_in(pg, "marketing.events") == {"key-000001": 1, "key-000002": 1}
    assert pg.sql("SELECT to_regclass('public.events')") == [(None,)]
    # The primary key made by CREATE TABLE is what ON CONFLICT uses.
    assert pg.sql(
        "SELECT indexdef LIKE '%UNIQUE%(event_key)' FROM pg_indexes WHERE schemaname = "
        "'marketing' AND tablename = 'events'"
    ) == [(True,)]


async def test_two_sinks_creating_the_table_at_once(pg: Database) -> None:
    sinks = [PostgresSink(pg.settings(instance=f"r{i}", table="race.events")) for i in range(4)]
    results: list[Kind] = []

    async def go(i: int) -> None:
        results.append((await sinks[i].deliver([event(i + 1)])).kind)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(go, i)
    for sink in sinks:
        await sink.aclose()
    assert results == [Kind.CONFIRMED] * 4
    assert len(keys_in(pg, "race.events")) == 4


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"password": "wrong"}, "password authentication failed"),
        ({"dsn_db": "no_such_db"}, "does not exist"),
        ({"dsn_port": "1"}, "connection"),
    ],
)
async def test_connection_problems_are_transient(
    pg: Database, change: dict[str, str], expected: str
) -> None:
    dsn = pg.server.dsn(change.get("dsn_db", pg.name))
    if "dsn_port" in change:
        dsn = dsn.replace(f"port={pg.server.port}", f"port={change['dsn_port']}")
    settings = pg.settings(dsn=dsn, password=change.get("password", pg.settings().password))
    sink = PostgresSink(settings)  # nothing happens before the first delivery
    result = await sink.deliver([event(1)])
    await sink.aclose()
    assert result.kind is Kind.TRANSIENT
    assert expected in result.reason


async def test_a_read_only_server_is_transient_then_recovers(pg: Database) -> None:
    sink = PostgresSink(pg.settings())
    assert (await sink.deliver([event(1)])).kind is Kind.CONFIRMED
    # What a standby after a failover looks like to a session: read-only transactions.
    pg.sql(f'ALTER DATABASE "{pg.name}" SET default_transaction_read_only = on')
    pg.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'streamd/pg'"
    )
    failed = await sink.deliver([event(2)])  # the old connection is gone: transient
    assert failed.kind is Kind.TRANSIENT
    failed = await sink.deliver([event(2)])  # a new one is read-only: transient
    assert failed.kind is Kind.TRANSIENT and "read-only" in failed.reason
    pg.sql(f'ALTER DATABASE "{pg.name}" SET default_transaction_read_only = off')
    ok = await sink.deliver([event(2)])
    await sink.aclose()
    assert (ok.kind, ok.present) == (Kind.CONFIRMED, 0)
    assert keys_in(pg) == {"key-000001": 1, "key-000002": 1}


async def test_a_cancelled_delivery_leaves_the_next_one_intact(pg: Database) -> None:
    sink = PostgresSink(pg.settings())
    assert (await sink.deliver([event(1)])).kind is Kind.CONFIRMED
    with pg.server.connect(pg.name) as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE streamd_events IN ACCESS EXCLUSIVE MODE")
        with trio.move_on_after(0.5) as scope:
            await sink.deliver([event(2), event(3)])
        assert scope.cancelled_caught
        # The abandoned thread's statement is cancelled at the server while the table is
        # still locked (so it cannot have committed), and its connection closed.
        await wait_until(
            lambda: (
                pg.sql("SELECT state FROM pg_stat_activity WHERE application_name = 'streamd/pg'")
                == []
            ),
            "the cancelled statement's connection closed",
        )
        locker.execute("ROLLBACK")
    # The abandoned thread ends (its statement was cancelled) before this one runs.
    for _ in range(3):
        result = await sink.deliver([event(3), event(4)])
        if result.kind is Kind.CONFIRMED:
            break
    await sink.aclose()
    assert result.kind is Kind.CONFIRMED
    assert keys_in(pg) == {f"key-{n:06d}": 1 for n in (1, 3, 4)}
