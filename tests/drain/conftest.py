"""Shared pieces of the drain tests: a journal with events in it, a recording sink."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import trio

from streamd.core import EventRecord, key_hash
from streamd.drain import DrainEvent, Kind, Result, Route, Sink, SinkSpec
from streamd.drain.sinks.base import CONFIRMED
from streamd.journal import Batch, Journal, WriterOptions, open_journal, utc_now


def record(
    key: str,
    *,
    stream: str = "activity",
    type: str = "com.adobe.platform.marketo.activity.standard.visitwebpage",
    munchkin_id: str = "123-ABC-456",
    activity_type_id: int = 1,
) -> EventRecord:
    return EventRecord(
        key=key,
        key_hash=key_hash(key),
        stream=stream,
        type=type,
        munchkin_id=munchkin_id,
        activity_type_id=activity_type_id,
        lead_id=7,
        occurred_at="2026-05-01T10:00:00.000Z",
        raw=f'{{"id": "{key}", "n": 1}}',
    )


async def append(journal: Journal, keys: Sequence[str], source: str = "events", **kw: str) -> None:
    records = [record(k, **kw) for k in keys]  # type: ignore[arg-type]
    await journal.append(Batch(source, utc_now(), "batch", records))


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(str(tmp_path / "journal.db"), WriterOptions()) as j:
        yield j


class Recorder:
    """A sink that records what it is given and answers from a script of results."""

    def __init__(self, script: Callable[[int], Result] | None = None) -> None:
        self.batches: list[list[DrainEvent]] = []
        self.attempts: list[tuple[float, list[str]]] = []  # (trio time, keys)
        self.delivery_ids: list[str] = []  # of each attempt
        self.script = script or (lambda n: CONFIRMED)
        self.closed = 0
        self.changed = trio.Event()
        self.hold: trio.Event | None = None

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        n = len(self.attempts)
        self.attempts.append((trio.current_time(), [e.key for e in events]))
        self.delivery_ids.append(delivery_id)
        if self.hold is not None:
            await self.hold.wait()
        result = self.script(n)
        if result.kind is Kind.CONFIRMED:
            self.batches.append(list(events))
        self.changed.set()
        self.changed = trio.Event()
        return result

    async def aclose(self) -> None:
        self.closed += 1

    @property
    def keys(self) -> list[str]:
        return [e.key for batch in self.batches for e in batch]


def spec(name: str, sink: Sink, **kw: object) -> SinkSpec:
    """A SinkSpec around an existing sink object; small, fast defaults."""
    from streamd.drain.sinks.sqlite import SqliteSink

    defaults: dict[str, object] = {"workers": 2, "batch_size": 10, "linger": 0.01}
    # As the service does: only the sqlite sink (and the test recorder) read whole events.
    defaults["full_events"] = isinstance(sink, Recorder | SqliteSink)
    defaults.update(kw)
    route = defaults.pop("route", Route(()))
    return SinkSpec(name, "test", route, lambda: sink, **defaults)  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Wait for ``condition`` with a deadline (checks every 10 ms)."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"timed out waiting for {what}"
