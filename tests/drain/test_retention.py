"""Retention on a real journal: age, confirmation by live sinks, the size cap and its policies."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streamd.core.timeparse import format_utc
from streamd.drain import open_drain
from streamd.drain.retention import Retention, RetentionSettings
from streamd.drain.store import open_reader
from streamd.errors import JournalBusy
from streamd.journal import Batch, Journal, WriterOptions, open_journal
from streamd.ops import DisableSink, PauseSink, ResumeSink, RewindSink

from .conftest import Recorder, record, spec, wait_until

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def add(journal: Journal, keys: list[str], days_ago: float) -> None:
    at = format_utc(NOW - timedelta(days=days_ago))
    await journal.append(Batch("events", at, "batch", [record(k) for k in keys]))


def saved_cursors(journal: Journal) -> dict[str, int]:
    conn = sqlite3.connect(journal.path)
    try:
        return dict(conn.execute("SELECT name, cursor FROM sinks"))
    finally:
        conn.close()


def seqs(journal: Journal) -> list[int]:
    conn = sqlite3.connect(journal.path)
    try:
        return [s for (s,) in conn.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        conn.close()


async def run(journal: Journal, sinks: list[str], **kw: object) -> Retention:
    retention = Retention(journal, sinks, RetentionSettings(chunk=3, **kw))  # type: ignore[arg-type]
    reader = open_reader(journal.path)
    try:
        await retention.run_once(reader, NOW)
    finally:
        reader.close()
    return retention


async def test_old_events_go_only_once_every_live_sink_passed_them(journal: Journal) -> None:
    await add(journal, [f"old{i}" for i in range(10)], days_ago=10)
    await add(journal, ["new1", "new2"], days_ago=1)
    fast, slow, off = Recorder(), Recorder(), Recorder()
    async with open_drain(journal, [spec("fast", fast), spec("slow", slow), spec("off", off)]) as d:
        await wait_until(lambda: set(saved_cursors(journal).values()) == {12}, "caught up")
        await d.run(PauseSink(sink="slow"))
        await d.run(RewindSink(sink="slow", from_seq=5))  # slow has passed only 1..4 now
        await d.run(DisableSink(sink="off"))
        await d.run(RewindSink(sink="off", from_seq=1))  # a disabled sink holds nothing back
        r = await run(journal, ["fast", "slow", "off"])
        assert seqs(journal) == list(range(5, 13))
        assert r.stats.deleted == 4
        await d.run(ResumeSink(sink="slow"))
        await wait_until(lambda: saved_cursors(journal)["slow"] == 12, "slow caught up")
        await run(journal, ["fast", "slow", "off"])
    assert seqs(journal) == [11, 12]  # the recent ones stay


async def test_without_sinks_age_alone_decides_but_the_newest_event_stays(
    journal: Journal,
) -> None:
    await add(journal, [f"o{i}" for i in range(7)], days_ago=30)
    await run(journal, [])
    assert seqs(journal) == [7]  # where the writer continues after a restart
    await add(journal, ["fresh"], days_ago=0)
    assert seqs(journal) == [7, 8]


def minutes(journal: Journal) -> list[tuple[str, int, int, int]]:
    conn = sqlite3.connect(journal.path)
    try:
        return conn.execute(
            "SELECT minute, events, first_seq, last_seq FROM event_counts ORDER BY minute"
        ).fetchall()
    finally:
        conn.close()


@pytest.fixture
async def counting(tmp_path: Path) -> AsyncIterator[Journal]:
    """A journal whose writer puts the per-minute counts in with every commit (by
    default they wait up to a second in memory: journal/counts.py)."""
    async with open_journal(str(tmp_path / "journal.db"), WriterOptions(counts_interval=0)) as j:
        yield j


async def test_counts_of_deleted_minutes_go_with_their_events(counting: Journal) -> None:
    journal = counting
    await add(journal, ["a1", "a2"], days_ago=30)  # seq 1, 2
    await add(journal, ["b1", "b2", "b3"], days_ago=20)  # seq 3..5
    await add(journal, ["c1"], days_ago=1)  # seq 6
    assert [m[1] for m in minutes(journal)] == [2, 3, 1]
    await run(journal, [], max_age=25 * 86400)  # the 30-day-old minute goes
    assert seqs(journal) == [3, 4, 5, 6]
    assert [(m[1], m[2], m[3]) for m in minutes(journal)] == [(3, 3, 5), (1, 6, 6)]
    await run(journal, [], max_age=2 * 86400)
    assert seqs(journal) == [6]
    assert [(m[1], m[2], m[3]) for m in minutes(journal)] == [(1, 6, 6)]


async def test_cap_with_refuse_answers_busy_until_under(journal: Journal) -> None:
    await add(journal, ["a", "b"], days_ago=0)
    r = await run(journal, [], max_bytes=4096)
    assert r.stats.refusing and r.stats.used_bytes > 4096
    with pytest.raises(JournalBusy, match="journal is full") as info:
        await add(journal, ["c"], days_ago=0)
    assert info.value.retry_after == 60
    assert seqs(journal) == [1, 2]  # refuse never deletes
    r = await run(journal, [], max_bytes=10**9)
    assert not r.stats.refusing
    await add(journal, ["c"], days_ago=0)


async def test_cap_with_drop_confirmed_deletes_confirmed_first_never_unconfirmed(
    journal: Journal,
) -> None:
    big = [f"k{i:05d}" for i in range(3000)]
    await add(journal, big, days_ago=0)
    sink = Recorder()
    async with open_drain(journal, [spec("s", sink, batch_size=500, max_in_flight=500)]) as d:
        await wait_until(lambda: saved_cursors(journal)["s"] == 3000, "confirmed")
        await d.run(PauseSink(sink="s"))
        await d.run(
            RewindSink(sink="s", from_seq=2001)
        )  # 2001..3000 unconfirmed again (and stay so: paused)
        reader = open_reader(journal.path)
        try:
            from streamd.drain.retention import used_bytes

            full = used_bytes(reader)
        finally:
            reader.close()
        r = await run(journal, ["s"], max_bytes=full // 2, policy="drop_confirmed")
        left = seqs(journal)
        assert left[-1] == 3000 and 2001 in left  # unconfirmed kept
        assert left[0] > 1  # confirmed ones went, recent as they are
        r = await run(journal, ["s"], max_bytes=full // 50, policy="drop_confirmed")
        assert r.stats.refusing  # what is left is unconfirmed: refuse, never drop
        assert seqs(journal)[0] == 2001
