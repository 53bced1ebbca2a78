"""A destination that refuses some events of a batch for good, and one that reports
which events it already held (the shared engines: postgres, kafka, nats)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import trio

from streamd.drain import open_drain
from streamd.drain.sinks.base import DrainEvent, Result, confirmed
from streamd.journal import Journal
from streamd.ops import RetryDeadLetters, RewindSink

from .conftest import append, spec, wait_until


def rows(journal: Journal, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(journal.path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


class KeyedTable:
    """A destination keyed by event key: it keeps the first copy, refuses keys that
    start with ``bad`` (a constraint the operator added), and says what it held."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}  # key -> times offered
        self.refuse = True

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        await trio.sleep(0)
        rejected = []
        present = 0
        for e in events:
            if self.refuse and e.key.startswith("bad"):
                rejected.append((e.seq, f"check constraint violated by {e.key}"))
                continue
            if e.key in self.held:
                present += 1
            self.held[e.key] = self.held.get(e.key, 0) + 1
        return confirmed(present=present, rejected=rejected)

    async def aclose(self) -> None:
        pass


async def test_only_the_refused_events_become_dead_letters(journal: Journal) -> None:
    await append(journal, ["good1", "bad2", "good3", "bad4"])
    sink = KeyedTable()
    async with open_drain(
        journal, [spec("pg", sink, batch_size=10, dedups=True, full_events=True)]
    ) as drain:
        await wait_until(lambda: drain.statistics()[0].cursor == 4, "the batch passed")
        (status,) = drain.statistics()
        assert status.confirmed == 2 and status.dead_letters == 2
        assert (status.destination_new, status.destination_present) == (2, 0)
    assert sorted(sink.held) == ["good1", "good3"]
    assert rows(journal, "SELECT seq, event_key, reason FROM dead_letters ORDER BY seq") == [
        (2, "bad2", "check constraint violated by bad2"),
        (4, "bad4", "check constraint violated by bad4"),
    ]


async def test_a_retried_dead_letter_refused_again_stays_with_the_new_reason(
    journal: Journal,
) -> None:
    await append(journal, ["bad1", "bad2"])
    sink = KeyedTable()
    async with open_drain(
        journal, [spec("pg", sink, batch_size=10, dedups=True, full_events=True)]
    ) as drain:
        await wait_until(
            lambda: rows(journal, "SELECT count(*) FROM dead_letters") == [(2,)], "dead-lettered"
        )
        sink.refuse = False  # the operator dropped the constraint... for bad1 only
        original = sink.deliver

        async def one_still_bad(events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
            result = await original([e for e in events if e.key != "bad2"])
            bad2 = [(e.seq, "still refused") for e in events if e.key == "bad2"]
            return confirmed(present=result.present, rejected=bad2)

        sink.deliver = one_still_bad  # type: ignore[method-assign]
        assert (await drain.run(RetryDeadLetters(sink="pg", all=True))).count == 2
        await wait_until(
            lambda: (
                rows(journal, "SELECT event_key, reason, retry FROM dead_letters")
                == [("bad2", "still refused", 0)]
            ),
            "bad1 delivered, bad2 kept with its new reason",
        )
    assert list(sink.held) == ["bad1"]


async def test_the_destination_reports_what_it_already_held(journal: Journal) -> None:
    await append(journal, ["a", "b", "c"])
    sink = KeyedTable()
    async with open_drain(
        journal, [spec("nats", sink, batch_size=10, dedups=True, full_events=True)]
    ) as drain:
        await wait_until(lambda: drain.statistics()[0].confirmed == 3, "delivered")
        await drain.run(RewindSink(sink="nats", from_seq=1))  # a redelivery of all three
        await wait_until(lambda: drain.statistics()[0].destination_present == 3, "held")
        (status,) = drain.statistics()
        assert (status.destination_new, status.destination_present) == (3, 3)
    assert sink.held == {"a": 2, "b": 2, "c": 2}


async def test_kinds_that_cannot_tell_report_nothing(journal: Journal) -> None:
    await append(journal, ["a"])
    sink = KeyedTable()
    async with open_drain(journal, [spec("http", sink, full_events=True)]) as drain:
        await wait_until(lambda: drain.statistics()[0].confirmed == 1, "delivered")
        (status,) = drain.statistics()
        assert status.destination_new is None and status.destination_present is None
