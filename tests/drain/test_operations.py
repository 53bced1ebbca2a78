"""Every delivery goes through the sink's runner: retries and replays honour its state,
its pool and its pace; no single batch stalls a sink; replays carry new delivery ids."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import trio
import trio.testing

from streamd.drain import RetrySettings, open_drain
from streamd.drain.sinks.base import CONFIRMED, permanent, transient
from streamd.journal import Journal, WriterOptions, open_journal
from streamd.ops import PauseSink, ReplayRange, ResumeSink, RetryDeadLetters, RewindSink

from .conftest import Recorder, append, spec, wait_until
from .receiver import Receiver, running
from .test_engine import db_rows
from .test_http_sink import http_sink


async def test_a_paused_sink_delivers_no_replay_and_no_dead_letter_retry(
    journal: Journal,
) -> None:
    """Issue 14: ``sinks pause h`` then ``sinks replay h --from-seq 1 --to-seq 600`` (or
    ``dlq retry --all``) delivered at once while ``sinks list`` said paused."""
    await append(journal, [f"a{i}" for i in range(6)])
    failing = {"on": True}
    sink = Recorder(lambda n: permanent("HTTP 422") if failing["on"] else CONFIRMED)
    async with open_drain(journal, [spec("h", sink, batch_size=3)]) as drain:
        await wait_until(lambda: drain.statistics()[0].cursor == 6, "dead-lettered")
        await wait_until(
            lambda: db_rows(journal, "SELECT count(*) FROM dead_letters") == [(6,)], "saved"
        )
        failing["on"] = False
        attempts = len(sink.attempts)
        await drain.run(PauseSink(sink="h"))
        assert (await drain.run(ReplayRange(sink="h", from_seq=1, to_seq=6))).count == 6
        assert (await drain.run(RetryDeadLetters(sink="h", all=True))).count == 6
        # Nothing may come: give a wrongly woken retrier ample time to show itself.
        await trio.sleep(0.5)
        assert len(sink.attempts) == attempts
        assert drain.statistics()[0].state == "paused"
        await drain.run(ResumeSink(sink="h"))
        await wait_until(lambda: sorted(sink.keys) == [f"a{i}" for i in range(6)], "after resume")


async def test_retries_and_replays_keep_the_pool_and_the_pace(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Issue 14: on a one-at-a-time sink (a batch every 2 s) a replay ran two requests at
    once, 0.8 s apart. Now a range replay is delivered ``batch_size`` events at a time,
    never two at once, and at least ``interval`` apart."""
    in_flight = {"now": 0, "max": 0}
    sink = Recorder()
    deliver = sink.deliver

    async def counting(events, *, delivery_id=""):  # type: ignore[no-untyped-def]
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            await trio.sleep(0.5)  # a slow receiver: overlaps would show
            return await deliver(events, delivery_id=delivery_id)
        finally:
            in_flight["now"] -= 1

    sink.deliver = counting  # type: ignore[method-assign]
    mock_clock.autojump_threshold = 0.02
    one = spec("legacy", sink, workers=1, batch_size=50, interval=2.0, linger=0.1)
    async with open_journal(str(tmp_path / "j.db"), WriterOptions(), commit_budget=math.inf) as j:
        await append(j, [f"m{i:03d}" for i in range(120)])
        async with open_drain(j, [one]) as drain:
            with trio.fail_after(600):
                while len(sink.keys) < 120:
                    await sink.changed.wait()
                first = len(sink.attempts)
                count = await drain.run(ReplayRange(sink="legacy", from_seq=1, to_seq=120))
                assert count.count == 120
                while len(sink.keys) < 240:
                    await sink.changed.wait()
    replayed = sink.attempts[first:]
    assert [len(keys) for _, keys in replayed] == [50, 50, 20]
    assert in_flight["max"] == 1
    starts = [t for t, _ in sink.attempts]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 2.0, gaps


async def test_one_batch_that_always_fails_does_not_hold_the_sink(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Issue 14: with the default retry settings (pause after 5, 8 attempts) one batch
    answered 5xx forever became the eternal probe: auto-paused, lag growing, 0 dead
    letters. Now it is dead-lettered after 8 attempts, the next batch proves the
    destination is up, the sink goes on, and the suspect is tried once more (it might
    have been the outage's victim): it fails again and stays a dead letter."""
    sink = Recorder()
    deliver = sink.deliver

    async def poisoned(events, *, delivery_id=""):  # type: ignore[no-untyped-def]
        if any(e.key == "poison" for e in events):
            sink.attempts.append((trio.current_time(), [e.key for e in events]))
            return transient("HTTP 503")
        return await deliver(events, delivery_id=delivery_id)

    sink.deliver = poisoned  # type: ignore[method-assign]
    mock_clock.autojump_threshold = 0.02
    defaults = spec("s", sink, workers=1, batch_size=2, retry=RetrySettings())
    async with open_journal(str(tmp_path / "j.db"), WriterOptions(), commit_budget=math.inf) as j:
        await append(j, ["poison", "p2", "ok1", "ok2", "ok3"])
        async with open_drain(j, [defaults]) as drain:
            with trio.fail_after(3600):  # virtual seconds
                while drain.statistics()[0].cursor < 5:
                    await sink.changed.wait()
            await wait_until(lambda: drain.statistics()[0].state == "active", "active")
            await wait_until(lambda: len(sink.attempts) >= 9, "the suspect tried once more")
            await wait_until(
                lambda: db_rows(j, "SELECT retry FROM dead_letters") == [(0,), (0,)], "kept"
            )
    assert sink.keys == ["ok1", "ok2", "ok3"]
    assert [keys for _, keys in sink.attempts].count(["poison", "p2"]) == 9
    letters = db_rows(j, "SELECT event_key, retry FROM dead_letters ORDER BY seq")
    assert letters == [("poison", 0), ("p2", 0)]


async def test_an_outage_dead_letters_nothing_for_good(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """The other side of that policy: when the next batch fails as often, the destination
    is down; the first one is marked for retry and everything arrives once it is up."""
    up = {"at": math.inf}
    sink = Recorder(lambda n: CONFIRMED if trio.current_time() >= up["at"] else transient("503"))
    mock_clock.autojump_threshold = 0.02
    defaults = spec("s", sink, workers=2, batch_size=2, retry=RetrySettings())
    keys = [f"e{i}" for i in range(6)]
    async with open_journal(str(tmp_path / "j.db"), WriterOptions(), commit_budget=math.inf) as j:
        await append(j, keys)
        async with open_drain(j, [defaults]) as drain:
            with trio.fail_after(7200):
                # Two probes in a row reached 8 attempts: the outage is recognised.
                while len(sink.attempts) < 30:
                    await sink.changed.wait()
                assert drain.statistics()[0].state == "auto-paused"
                up["at"] = trio.current_time()
                while sorted(set(sink.keys)) != keys:
                    await sink.changed.wait()
            await wait_until(
                lambda: db_rows(j, "SELECT count(*) FROM dead_letters") == [(0,)], "retried"
            )
            assert drain.statistics()[0].cursor == 6


async def test_an_outage_that_ends_during_the_next_probe_loses_nothing(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Seen with a 60 s Kafka outage under the default retry settings: the probe was
    dead-lettered as a suspect after 8 attempts, the destination came back while the
    next probe was below 8, and the suspect stayed a dead letter although nothing was
    wrong with it. Now the suspect is tried again once the destination is up."""
    up = {"at": math.inf}
    sink = Recorder(lambda n: CONFIRMED if trio.current_time() >= up["at"] else transient("503"))
    mock_clock.autojump_threshold = 0.02
    defaults = spec("s", sink, workers=2, batch_size=2, retry=RetrySettings())
    keys = [f"e{i}" for i in range(6)]
    async with open_journal(str(tmp_path / "j.db"), WriterOptions(), commit_budget=math.inf) as j:
        await append(j, keys)
        async with open_drain(j, [defaults]) as drain:
            with trio.fail_after(7200):
                while not db_rows(j, "SELECT count(*) FROM dead_letters")[0][0]:
                    await sink.changed.wait()  # the first probe became a suspect
                up["at"] = trio.current_time()  # ... and the destination is back
                while sorted(set(sink.keys)) != keys:
                    await sink.changed.wait()
            await wait_until(
                lambda: db_rows(j, "SELECT count(*) FROM dead_letters") == [(0,)], "retried"
            )
            assert drain.statistics()[0].cursor == 6


async def test_replays_carry_new_delivery_ids(journal: Journal) -> None:
    """A receiver that drops repeated ``webhook-id``s must not drop an operator's replay;
    attempts of one batch keep one id (that is what makes them repeats)."""
    await append(journal, [f"w{i}" for i in range(4)])
    async with running(Receiver()) as receiver:
        # A new sink each time the runner starts (a rewind restarts it), as the service does.
        hook = spec("hook", http_sink(receiver.url), batch_size=2, workers=1)
        hook = dataclasses.replace(hook, open_sink=lambda: http_sink(receiver.url))
        async with open_drain(journal, [hook]) as drain:
            await wait_until(lambda: len(receiver.requests) == 2, "first deliveries")
            await drain.run(RewindSink(sink="hook", from_seq=1))
            await wait_until(lambda: len(receiver.requests) == 4, "rewound")
            await drain.run(ReplayRange(sink="hook", from_seq=3, to_seq=4))
            await wait_until(lambda: len(receiver.requests) == 5, "range replayed")
            await append(journal, ["w4", "w5"])
            await wait_until(lambda: len(receiver.requests) == 6, "new events")
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids[0] == "hook-1-2" and ids[1] == "hook-3-4"
    assert ids[2].startswith("hook-1-2-r") and ids[3].startswith("hook-3-4-r")
    assert ids[2].split("-r")[1] == ids[3].split("-r")[1]  # one rewind, one tag
    assert ids[4].startswith("hook-3-4-r") and ids[4] != ids[3]
    assert ids[5] == "hook-5-6"  # past the rewound range: a first delivery again
    assert len(set(ids)) == 6


async def test_a_rewind_replays_what_was_in_flight_under_new_ids_too(journal: Journal) -> None:
    """A batch the destination may have taken but whose confirmation never came back
    (the rewind cancelled it) is part of the replay: it, too, gets a new id."""
    await append(journal, ["f1", "f2", "f3", "f4"])
    sink = Recorder()
    deliver = sink.deliver
    answer = trio.Event()

    async def second_hangs(events, *, delivery_id=""):  # type: ignore[no-untyped-def]
        if len(sink.attempts) == 1:  # the second attempt: taken, never answered
            sink.attempts.append((trio.current_time(), [e.key for e in events]))
            sink.delivery_ids.append(delivery_id)
            await answer.wait()
        return await deliver(events, delivery_id=delivery_id)

    sink.deliver = second_hangs  # type: ignore[method-assign]
    async with open_drain(journal, [spec("f", sink, batch_size=2, workers=1)]) as drain:
        await wait_until(lambda: len(sink.attempts) == 2, "the second batch in flight")
        await drain.run(RewindSink(sink="f", from_seq=1))
        answer.set()
        await wait_until(lambda: len(sink.keys) == 6, "the first batch, then both again")
    first, in_flight, *again = sink.delivery_ids
    assert (first, in_flight) == ("f-1-2", "f-3-4")
    assert [i.rsplit("-r", 1)[0] for i in again] == ["f-1-2", "f-3-4"]
    assert in_flight not in again and first not in again
