"""Journals for the inspection tests, written by streamd's own writer.

``fixture_journal``: every contract fixture once (plus a duplicate delivery),
with known receive times. ``generated_journal``: bodies from the benchmark's
event generator (streamd/emit/generate.py), deterministic for a seed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import replace
from itertools import islice
from pathlib import Path

from streamd.core import decode_delivery
from streamd.emit.generate import iter_batches
from streamd.journal import Batch, Job, JournalWriter, WriterOptions
from tests.conftest import fixture_bytes

# (fixture, source, received_at): the order they are journaled in.
FIXTURE_DELIVERIES = (
    ("legacy_push", "marketo-push", "2026-05-01T10:00:00.000Z"),
    ("lads_single", "adobe-io", "2026-05-02T09:15:00.000Z"),
    ("lads_batch", "adobe-io", "2026-05-02T09:15:01.000Z"),
    ("audit_wrapper", "adobe-io", "2026-05-02T12:00:00.000Z"),
    ("audit_old_wrapper", "adobe-io", "2026-05-02T12:00:01.000Z"),
    ("notification", "adobe-io", "2026-05-03T08:00:00.000Z"),
    ("lads_single", "adobe-io", "2026-05-03T08:00:05.000Z"),  # a retry: all duplicates
)
FIXTURE_EVENTS = 14  # distinct events in the fixtures above


def submit_and_wait(writer: JournalWriter, batch: Batch) -> int:
    """Submit ``batch`` to a started writer, wait for its commit; the events accepted."""
    done = threading.Event()

    def finished(_job: Job) -> None:
        done.set()

    job = Job(batch=batch, on_done=finished)
    writer.submit(job)
    assert done.wait(30), "the writer did not commit within 30 s"
    assert job.error is None, job.error
    assert job.result is not None
    return job.result.accepted


def write_batches(path: Path, batches: Iterable[Batch], index_keys: int | None = None) -> int:
    """Journal ``batches`` in order with streamd's writer; return the events accepted.

    ``index_keys``: the keys the writer collects before the indexer writes them (its
    default when None); a test of runs of the lead or type index wants several."""
    options = WriterOptions(max_queued_events=10**9)
    if index_keys is not None:
        options = replace(options, index_keys=index_keys)
    writer = JournalWriter(str(path), options, lambda: "")
    writer.start()
    try:
        return sum(submit_and_wait(writer, batch) for batch in batches)
    finally:
        writer.close()


def fixture_batches() -> list[Batch]:
    """The contract fixtures as batches, with the receive times of FIXTURE_DELIVERIES."""
    out = []
    for name, source, received_at in FIXTURE_DELIVERIES:
        d = decode_delivery(fixture_bytes(name))
        out.append(Batch(source, received_at, d.shape, d.events, d.message_id))
    return out


def fixture_journal(path: Path) -> Path:
    """A journal holding every fixture (14 events, 7 deliveries, 1 duplicate)."""
    assert write_batches(path, fixture_batches()) == FIXTURE_EVENTS
    return path


def generated_batches(
    events: int, *, batch: int = 500, seed: int = 7, start: int = 1_777_712_400
) -> list[Batch]:
    """Bench-generator bodies (legacy and I/O alternating), received one second apart."""
    out = []
    legacy = iter_batches("legacy", batch, seed=seed, worker=1)
    io = iter_batches("io", batch, seed=seed, worker=2)
    count = max(1, events // batch)
    for i, body in enumerate(
        islice((b for pair in zip(legacy, io, strict=False) for b in pair), count)
    ):
        d = decode_delivery(body)
        received = _stamp(start + i)
        out.append(Batch("bench-legacy" if i % 2 == 0 else "bench-io", received, d.shape, d.events))
    return out


def _stamp(epoch: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


def generated_journal(path: Path, events: int, index_keys: int | None = None, **kw: int) -> Path:
    """A journal of ``events`` generated events."""
    write_batches(path, generated_batches(events, **kw), index_keys)
    return path


def rows(path: str | Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """``sql``'s rows from the SQLite file at ``path`` (a connection of its own)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
