"""The drain engine on a real journal: order, routing, windows, retries, pause, DLQ, replay."""

from __future__ import annotations

import itertools
import math
import sqlite3
from pathlib import Path

import pytest
import trio

from streamd.drain import Filter, Kind, Result, RetrySettings, Route, open_drain
from streamd.drain.sinks.base import CONFIRMED, permanent, transient
from streamd.journal import Journal, WriterOptions, open_journal
from streamd.ops import (
    DisableSink,
    EnableSink,
    PauseSink,
    ReplayRange,
    ResumeSink,
    RetryDeadLetters,
    RewindSink,
)

from .conftest import Recorder, append, spec, wait_until


def db_rows(journal: Journal, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(journal.path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def cursor_of(journal: Journal, name: str) -> int:
    rows = db_rows(journal, f"SELECT cursor FROM sinks WHERE name = '{name}'")
    return int(rows[0][0]) if rows else -1  # type: ignore[call-overload]


async def test_every_event_in_order_and_cursor_saved(journal: Journal) -> None:
    keys = [f"k{i:04d}" for i in range(250)]
    for i in range(0, 250, 50):
        await append(journal, keys[i : i + 50])
    sink = Recorder()
    async with open_drain(journal, [spec("rec", sink, workers=1)]) as drain:
        await wait_until(lambda: len(sink.keys) == 250, "all events delivered")
        await wait_until(lambda: cursor_of(journal, "rec") == 250, "cursor saved")
        # Events arriving later wake the drain (no polling).
        await append(journal, ["late-1", "late-2"])
        await wait_until(lambda: sink.keys[-2:] == ["late-1", "late-2"], "late events")
        assert [s.state for s in drain.statistics()] == ["active"]
    assert sink.keys == [*keys, "late-1", "late-2"]
    assert all(len(b) <= 10 for b in sink.batches)
    assert cursor_of(journal, "rec") == 252
    assert sink.closed == 1


async def test_routing_filters_and_unmatched_events_advance_the_cursor(
    journal: Journal,
) -> None:
    await append(journal, ["a1", "a2"], type="com.adobe.platform.marketo.activity.standard.x")
    await append(journal, ["u1"], stream="audit", type="com.adobe.platform.marketo.audit.y")
    await append(journal, ["o1"], source="other-src")
    await append(journal, ["n1"], stream="notification", type="z")
    route = Route(
        [
            Filter(types=("com.adobe.platform.marketo.activity.*",), sources=("events",)),
            Filter(streams=("audit",)),
        ]
    )
    nothing = Route([Filter(munchkin_ids=("nobody",))])
    taken, none = Recorder(), Recorder()
    async with open_drain(
        journal, [spec("some", taken, route=route), spec("none", none, route=nothing)]
    ):
        await wait_until(lambda: cursor_of(journal, "some") == 5, "cursor past all")
        await wait_until(lambda: cursor_of(journal, "none") == 5, "cursor past unmatched")
    assert sorted(taken.keys) == ["a1", "a2", "u1"]
    assert none.attempts == []


async def test_window_bounds_what_is_read_but_not_saved(journal: Journal) -> None:
    await append(journal, [f"w{i}" for i in range(100)])
    sink = Recorder()
    sink.hold = trio.Event()
    async with open_drain(
        journal, [spec("win", sink, workers=4, batch_size=10, max_in_flight=30)]
    ) as drain:
        await wait_until(lambda: len(sink.attempts) == 3, "three batches in flight")
        await trio.sleep(0.2)  # give a runaway reader the chance to read more
        runner = drain.runner_statistics("win")
        assert runner is not None
        assert runner.outstanding <= 30
        assert len(sink.attempts) == 3  # the fourth worker has nothing: the window is full
        sink.hold.set()
        await wait_until(lambda: len(sink.keys) == 100, "all delivered")


async def test_transient_failures_back_off_then_succeed(journal: Journal) -> None:
    await append(journal, ["x1", "x2"])
    sink = Recorder(lambda n: transient("503 from receiver") if n < 2 else CONFIRMED)
    retry = RetrySettings(backoff_base=0.05, backoff_cap=0.1, jitter=0.0, pause_after=10)
    async with open_drain(journal, [spec("b", sink, retry=retry)]):
        await wait_until(lambda: sink.keys == ["x1", "x2"], "delivered after retries")
    (t0, _), (t1, _), (t2, _) = sink.attempts
    assert t1 - t0 >= 0.05 and t2 - t1 >= 0.1  # exponential: base, then 2 x base (capped)
    assert db_rows(journal, "SELECT count(*) FROM dead_letters") == [(0,)]


async def test_permanent_failure_dead_letters_the_batch_and_moves_on(journal: Journal) -> None:
    await append(journal, ["bad1", "bad2"])
    await append(journal, ["good"])
    sink = Recorder(
        lambda n: permanent("400 Bad Request", '{"error":"nope"}') if n == 0 else CONFIRMED
    )
    async with open_drain(journal, [spec("p", sink, workers=1, batch_size=2)]):
        await wait_until(lambda: cursor_of(journal, "p") == 3, "cursor past everything")
    assert sink.keys == ["good"]
    assert db_rows(
        journal, "SELECT sink, seq, event_key, reason, attempts, last_response FROM dead_letters"
    ) == [
        ("p", 1, "bad1", "400 Bad Request", 1, '{"error":"nope"}'),
        ("p", 2, "bad2", "400 Bad Request", 1, '{"error":"nope"}'),
    ]


async def test_max_attempts_dead_letters_transient_failures(journal: Journal) -> None:
    await append(journal, ["t1"])
    sink = Recorder(lambda n: transient("timeout"))
    retry = RetrySettings(max_attempts=3, backoff_base=0.01, backoff_cap=0.01, pause_after=50)
    async with open_drain(journal, [spec("m", sink, retry=retry)]):
        await wait_until(lambda: cursor_of(journal, "m") == 1, "dead-lettered")
    assert len(sink.attempts) == 3
    assert db_rows(journal, "SELECT reason, attempts FROM dead_letters") == [("timeout", 3)]


async def test_pause_probe_and_automatic_resume(journal: Journal) -> None:
    await append(journal, [f"p{i}" for i in range(30)])
    outage = {"down": True}
    sink = Recorder(lambda n: transient("connection refused") if outage["down"] else CONFIRMED)
    retry = RetrySettings(
        max_attempts=50, backoff_base=0.01, backoff_cap=0.01, pause_after=3, probe_interval=0.1
    )
    async with open_drain(journal, [spec("z", sink, workers=3, retry=retry)]) as drain:
        await wait_until(lambda: drain.statistics()[0].state == "auto-paused", "auto-pause")
        paused_at = len(sink.attempts)
        await wait_until(lambda: len(sink.attempts) >= paused_at + 3, "three probes")
        # Paused: one batch probes, every probe_interval at the soonest; below max_attempts
        # nothing is dead-lettered.
        probes = sink.attempts[paused_at - 1 :]
        assert len({tuple(keys) for _, keys in probes}) == 1
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(probes)]
        assert all(gap >= 0.1 for gap in gaps), gaps
        assert db_rows(journal, "SELECT count(*) FROM dead_letters") == [(0,)]
        outage["down"] = False
        await wait_until(lambda: len(set(sink.keys)) == 30, "resumed and delivered")
        assert drain.statistics()[0].state == "active"
        assert drain.statistics()[0].last_error == "connection refused"


async def test_operator_pause_resume_disable_enable(journal: Journal) -> None:
    sink = Recorder()
    async with open_drain(journal, [spec("op", sink)]) as drain:
        await drain.run(PauseSink(sink="op"))
        await append(journal, ["e1"])
        await trio.sleep(0.1)
        assert sink.attempts == []
        assert drain.statistics()[0].state == "paused"
        await drain.run(ResumeSink(sink="op"))
        await wait_until(lambda: sink.keys == ["e1"], "delivered after resume")
        await drain.run(DisableSink(sink="op"))
        assert drain.statistics()[0].state == "disabled"
        await append(journal, ["e2"])
        await trio.sleep(0.1)
        assert sink.keys == ["e1"]
    # A disabled sink stays off across restarts.
    async with open_drain(journal, [spec("op", sink)]) as drain:
        await trio.sleep(0.1)
        assert sink.keys == ["e1"]
        assert drain.statistics()[0].state == "disabled"
        await drain.run(EnableSink(sink="op"))
        await wait_until(lambda: sink.keys == ["e1", "e2"], "delivered after enable")


async def test_gone_disables_the_sink_without_confirming(journal: Journal) -> None:
    await append(journal, ["g1"])
    sink = Recorder(lambda n: Result(Kind.GONE, "410 Gone"))
    async with open_drain(journal, [spec("gone", sink)]) as drain:
        await wait_until(lambda: drain.statistics()[0].state == "disabled", "disabled")
        await wait_until(
            lambda: (
                db_rows(journal, "SELECT state, reason FROM sinks") == [("disabled", "410 Gone")]
            ),
            "state saved",
        )
    assert cursor_of(journal, "gone") == 0
    assert len(sink.attempts) == 1


async def test_replay_rewinds_and_dead_letters_retry(journal: Journal) -> None:
    await append(journal, ["r1", "r2", "r3"])
    failing = {"on": True}
    sink = Recorder(lambda n: permanent("422") if failing["on"] else CONFIRMED)
    async with open_drain(journal, [spec("rp", sink, batch_size=3)]) as drain:
        await wait_until(lambda: cursor_of(journal, "rp") == 3, "dead-lettered")
        failing["on"] = False
        assert (await drain.run(RetryDeadLetters(sink="rp", all=True))).count == 3
        await wait_until(lambda: sorted(sink.keys) == ["r1", "r2", "r3"], "retried")
        # Re-delivered with the journal's columns, not only what the dead letter kept.
        assert {e.munchkin_id for b in sink.batches for e in b} == {"123-ABC-456"}
        assert {e.source for b in sink.batches for e in b} == {"events"}
        await wait_until(
            lambda: db_rows(journal, "SELECT count(*) FROM dead_letters") == [(0,)], "removed"
        )
        before = len(sink.keys)
        row = await drain.run(RewindSink(sink="rp", from_seq=2))
        assert row.cursor == 1
        await wait_until(lambda: sink.keys[before:] == ["r2", "r3"], "replayed from seq 2")
        await wait_until(lambda: drain.statistics()[0].cursor == 3, "cursor back at the end")
        # A filtered range, the cursor staying where it is.
        before = len(sink.keys)
        assert (
            await drain.run(ReplayRange(sink="rp", from_seq=1, to_seq=3, types=["*visitwebpage"]))
        ).count == 3
        assert (
            await drain.run(ReplayRange(sink="rp", from_seq=1, to_seq=3, streams=["audit"]))
        ).count == 0
        await wait_until(lambda: len(sink.keys) == before + 3, "range re-delivered")
        assert sorted(sink.keys[before:]) == ["r1", "r2", "r3"]
        await wait_until(
            lambda: db_rows(journal, "SELECT count(*) FROM dead_letters") == [(0,)], "done"
        )
        (status,) = await drain.sinks()
        assert (status.cursor, status.lag_events, status.dead_letters) == (3, 0, 0)
        with pytest.raises(Exception, match="no sink named 'nope'"):
            await drain.run(PauseSink(sink="nope"))


async def test_graceful_stop_leaves_unconfirmed_events_for_the_next_run(
    journal: Journal,
) -> None:
    await append(journal, ["s1", "s2"])
    sink = Recorder(lambda n: transient("down"))
    retry = RetrySettings(backoff_base=120, backoff_cap=120, pause_after=100)
    with trio.fail_after(60):  # the grace (1 s) ends the 120 s backoff sleep: no waiting it out
        async with open_drain(journal, [spec("gs", sink, retry=retry)], grace=1):
            await wait_until(lambda: len(sink.attempts) >= 1, "first attempt")
    assert cursor_of(journal, "gs") == 0
    ok = Recorder()
    async with open_drain(journal, [spec("gs", ok)]):
        await wait_until(lambda: ok.keys == ["s1", "s2"], "delivered by the next run")


async def test_drain_state_survives_reopen(tmp_path: Path, journal: Journal) -> None:
    await append(journal, ["q1"])
    sink = Recorder()
    async with open_drain(journal, [spec("keep", sink)]):
        await wait_until(lambda: cursor_of(journal, "keep") == 1, "saved")
    again = Recorder()
    async with open_drain(journal, [spec("keep", again), spec("new", Recorder(), start="latest")]):
        await append(journal, ["q2"])
        await wait_until(lambda: again.keys == ["q2"], "only the new event")
    assert db_rows(journal, "SELECT name, cursor FROM sinks ORDER BY name") == [
        ("keep", 2),
        ("new", 2),
    ]


async def test_a_stuck_save_shows_as_no_progress_for_the_watchdog(journal: Journal) -> None:
    sink = Recorder()
    async with open_drain(journal, [spec("rec", sink, workers=1)]) as drain:
        await append(journal, ["p1", "p2"])
        await wait_until(lambda: cursor_of(journal, "rec") == 2, "cursor saved")
        assert drain.making_progress(within=0.2)
        # The sink holds p3 until SQLite's write lock is taken from outside; then it
        # confirms, and the drain's save of that confirmation cannot commit.
        sink.hold = trio.Event()
        await append(journal, ["p3"])
        await wait_until(lambda: len(sink.attempts) == 2, "p3 handed to the sink")
        blocker = sqlite3.connect(journal.path, isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            sink.hold.set()
            await wait_until(lambda: "p3" in sink.keys, "p3 confirmed")
            await trio.sleep(0.5)
            assert not drain.making_progress(within=0.2)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_until(lambda: cursor_of(journal, "rec") == 3, "saved once the lock is gone")
        await wait_until(lambda: drain.making_progress(within=0.2), "progress again")


async def test_marketo_preset_schedule_on_a_mock_clock(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """The engine itself, on virtual time: 3 retries 3 minutes apart, then paused and
    retried every 3 minutes until a delivery succeeds; batches every 2 s of up to 500."""
    from streamd.drain.presets import PRESETS

    pool, retry = PRESETS["marketo"]
    up_from = 7  # the destination fails the first 7 attempts
    sink = Recorder(lambda n: transient("HTTP 503") if n < up_from else CONFIRMED)
    marketo = spec(
        "legacy",
        sink,
        workers=pool.workers,
        batch_size=pool.batch_size,
        linger=pool.linger,
        interval=pool.interval,
        max_in_flight=pool.max_in_flight,
        timeout=pool.timeout,
        retry=retry,
    )
    # Virtual time jumps to the next deadline once every task has waited 250 ms of real
    # time: long enough for the journal's threads (which the clock cannot see) to answer
    # even on a saturated machine (at 20 ms, time jumped while a thread worked: a retry's
    # gap grew and the hour ran out). About 20 jumps: 5 s.
    mock_clock.autojump_threshold = 0.25
    async with open_journal(str(tmp_path / "j.db"), WriterOptions(), commit_budget=math.inf) as j:
        await append(j, [f"m{i:04d}" for i in range(1200)])
        async with open_drain(j, [marketo]) as drain:
            with trio.fail_after(3600):  # virtual seconds
                while len(sink.attempts) < 4:
                    await sink.changed.wait()
                assert drain.statistics()[0].state == "auto-paused"
                while len(sink.keys) < 1200:
                    await sink.changed.wait()
                assert drain.statistics()[0].state == "active"
    times = [t - sink.attempts[0][0] for t, _ in sink.attempts]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    # Attempts 1-4 (first + 3 retries) 180 s apart, then probes every 180 s while paused;
    # the 8th attempt succeeds and the stream resumes: the next batches follow every 2 s.
    assert gaps[:7] == [180.0] * 7
    assert gaps[7:] == [2.0, 2.0]
    assert [len(keys) for _, keys in sink.attempts[7:]] == [500, 500, 200]
    # One batch of 500 was retried throughout.
    assert all(keys == sink.attempts[0][1] for _, keys in sink.attempts[:8])


async def test_a_sink_raising_is_retried_not_fatal(journal: Journal) -> None:
    await append(journal, ["b1"])

    def script(n: int) -> Result:
        if n == 0:
            raise RuntimeError("a bug in a sink")
        return CONFIRMED

    sink = Recorder(script)
    retry = RetrySettings(backoff_base=0.01, backoff_cap=0.01, jitter=0.0)
    async with open_drain(journal, [spec("buggy", sink, retry=retry)]) as drain:
        await wait_until(lambda: sink.keys == ["b1"], "delivered on the retry")
        assert drain.statistics()[0].last_error == "unexpected RuntimeError: a bug in a sink"


async def test_a_failing_reader_restarts_the_sink(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamd.drain import engine

    monkeypatch.setattr(engine, "_RESTART_DELAY", 0.05)
    await append(journal, ["f1", "f2"])

    class Flaky(Route):
        failures = 1

        def matches(self, event: object) -> bool:
            if Flaky.failures:
                Flaky.failures -= 1
                raise sqlite3.OperationalError("disk I/O error")
            return True

    sink = Recorder()
    async with open_drain(journal, [spec("flaky", sink, route=Flaky(()))]) as drain:
        await wait_until(lambda: sink.keys == ["f1", "f2"], "delivered after the restart")
        assert drain.statistics()[0].state == "active"
