"""Ingest first: sinks pause between pages while the journal writer is saturated."""

from __future__ import annotations

import pytest
import trio

from streamd.drain import YieldSettings, open_drain
from streamd.drain.pressure import IngestPressure
from streamd.journal import Journal

from .conftest import Recorder, append, spec, wait_until


def test_the_busy_ratio_is_commit_time_over_wall_time_per_window() -> None:
    now, spent = [0.0], [0.0]
    p = IngestPressure(lambda: spent[0], YieldSettings(pause=0.2, window=1.0), lambda: now[0])
    assert p.pause() == 0.0  # no window completed yet
    now[0], spent[0] = 0.5, 0.5
    assert p.sample() == 0.0  # still inside the first window
    now[0], spent[0] = 1.0, 0.8
    assert p.sample() == pytest.approx(0.8)
    assert p.pause() == 0.2 and p.yields == 1
    now[0], spent[0] = 2.0, 1.1  # the next second: 0.3 busy
    assert p.pause() == 0.0 and p.busy == pytest.approx(0.3)
    now[0], spent[0] = 2.5, 1.1
    assert p.sample() == pytest.approx(0.3)  # a window in progress keeps the last ratio
    now[0], spent[0] = 3.0, 5.0  # more commit time than wall time (clock skew): capped
    assert p.sample() == 1.0


def test_a_zero_pause_never_yields() -> None:
    now, spent = [0.0], [0.0]
    p = IngestPressure(lambda: spent[0], YieldSettings(pause=0.0), lambda: now[0])
    now[0], spent[0] = 1.0, 1.0
    assert p.pause() == 0.0 and p.yields == 0


async def test_a_saturated_writer_slows_the_sinks_but_never_stops_them(journal: Journal) -> None:
    keys = [f"k{i:05d}" for i in range(3000)]
    sink = Recorder()
    settings = YieldSettings(pause=0.05, busy_ratio=0.5, window=0.01)
    specs = [spec("rec", sink, batch_size=500)]
    # A saturated writer: its commit time grows as fast as the clock.
    async with open_drain(
        journal, specs, yield_settings=settings, commit_seconds=trio.current_time
    ) as d:
        await trio.sleep(0.02)  # one whole window of it, so that every page sees it
        assert d.pressure.sample() >= 0.5
        for i in range(0, 3000, 500):
            await append(journal, keys[i : i + 500])
        await wait_until(lambda: len(sink.keys) == 3000, "every event, slowly")
        runner = d.runner_statistics("rec")
        assert runner is not None and runner.yields >= 3  # a pause before every page
        assert d.pressure.yields >= 3 and d.pressure.busy >= 0.5
    assert sink.keys == keys


async def test_an_idle_writer_costs_the_sinks_nothing(journal: Journal) -> None:
    await append(journal, [f"i{i}" for i in range(2000)])
    sink = Recorder()
    # A pause long enough that one taken would outlast wait_until's deadline.
    settings = YieldSettings(pause=60.0, busy_ratio=0.5, window=0.01)
    # An idle writer: its commit time stands still. (The real one's would move with the
    # drain's own cursor saves, and on a loaded machine one slow fsync inside a 10 ms
    # window reads as "busy"; that is the saturated case, tested above.)
    async with open_drain(
        journal,
        [spec("rec", sink, batch_size=500)],
        yield_settings=settings,
        commit_seconds=lambda: 0.0,
    ) as d:
        await wait_until(lambda: len(sink.keys) == 2000, "every event")
        assert d.pressure.yields == 0
        assert d.pressure.sample() == 0.0
        runner = d.runner_statistics("rec")
        assert runner is not None and runner.yields == 0
    assert sink.keys == [f"i{i}" for i in range(2000)]
