"""The writer's records: its options, a request's batch and job, a control op, its
statistics, and the commit-latency histogram."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamd.core.wire import EventRecord
from streamd.journal.schema import Synchronous

if TYPE_CHECKING:
    from prometheus_client import Histogram

# Upper bounds (seconds) of the commit-latency histogram; the last bucket is +Inf.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def commit_histogram() -> Histogram:
    """The ``streamd_commit_seconds`` histogram, in no registry: the writer observes each
    group commit; the daemon's metrics collector reads it at scrape time."""
    # Imported here: the inspection commands read the journal without ever starting a
    # writer, and need not load prometheus_client.
    from prometheus_client import Histogram

    return Histogram(
        "streamd_commit_seconds",
        "Duration of each journal group commit (fsync included).",
        buckets=COMMIT_BUCKETS,
        registry=None,
    )


MAX_MUNCHKINS_TRACKED = 1000


@dataclass(frozen=True, slots=True)
class WriterOptions:
    """Tuning of the writer; every bound is explicit."""

    synchronous: Synchronous = "full"
    cache_mib: int = 24
    max_events_per_commit: int = 20_000
    max_queued_events: int = 200_000
    min_free_disk_bytes: int = 256 * 1024 * 1024
    checkpoint_interval: float = 1.0
    wal_max_bytes: int = 64 * 1024 * 1024
    # Seconds the per-minute counts of committed groups may wait in memory before they
    # are written into event_counts (journal/counts.py); readers add what waits.
    counts_interval: float = 1.0
    # Keys committed to the journal but not yet to the dedup index: the writer collects
    # them into one generation of up to index_keys keys, or index_interval seconds, and
    # only then hands it to the indexer (ARCHITECTURE.md, "Keys indexed in generations of
    # 20,000"). Lookups consult the collected keys; a start re-indexes them.
    index_keys: int = 20_000
    index_interval: float = 1.0
    # At stop, how long the indexer tries again to write keys the index file refuses
    # (another process holds its write lock, say) before leaving them to the next start.
    index_stop_grace: float = 10.0


@dataclass(frozen=True, slots=True)
class Batch:
    """One request's events and where they came from."""

    source: str
    received_at: str
    shape: str
    events: Sequence[EventRecord]
    message_id: str | None = None
    adobe_event_id: str | None = None
    retry_count: int | None = None
    # A pull source's page: the position of its last event, saved for ``source`` in
    # the same transaction as the events, so a restart resumes exactly after them.
    position: str | None = None
    # (events, new events) of the same page's earlier batches, when a page larger than
    # the writer takes at once was split: added to the counts saved with the position.
    page_tally: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What a committed batch did: new events, duplicates, the delivery row id."""

    accepted: int
    duplicates: int
    delivery: int


@dataclass(slots=True, eq=False)
class Job:
    """A batch waiting for the writer, and its outcome once committed.

    ``taken`` and ``abandoned`` change only under the writer's lock and exclude each
    other (:meth:`JournalWriter.abandon`): a job the writer took is written and its
    outcome reported; an abandoned one is never written.
    """

    batch: Batch
    on_done: Callable[[Job], None] | None = None  # called in the writer thread, unless
    waiter: object = None  # ... the writer's ``notify`` reports whole groups (then: its token)
    result: AppendResult | None = None
    error: BaseException | None = None
    abandoned: bool = False
    taken: bool = False


@dataclass(slots=True, eq=False)
class Control:
    """A small write of another part (drain cursors, dead letters, retention) for the writer.

    ``op`` runs in the writer thread inside the next group transaction, in its own
    savepoint, so the drain never opens a second writing connection (which would make
    ingest commits wait for SQLite's single write lock). Its return value becomes
    ``result``; an exception rolls back that op alone and becomes ``error``.
    """

    op: Callable[[sqlite3.Connection], object]
    waiter: object = None
    result: object = None
    error: BaseException | None = None


@dataclass(slots=True)
class WriterStatistics:
    """Counters of the writer thread (read without a lock: each is one word)."""

    commits: int = 0
    batches: int = 0
    events: int = 0
    duplicates: int = 0
    last_commit_seconds: float = 0.0
    max_commit_seconds: float = 0.0
    queued_events: int = 0
    low_disk: bool = False
    checkpoints: int = 0
    reindexed: int = 0
    last_seq: int = 0  # the highest committed events.seq
    controls: int = 0
    errors: list[str] = field(default_factory=list)
    # time.monotonic() when the writer thread last finished a *successful* commit or
    # found nothing to do: a stale value with batches waiting means a wedged writer,
    # or one whose commits fail (a failed commit is no progress).
    progress_at: float = field(default_factory=time.monotonic)
    # Commits failing: time.time() of the first failure in a row and the last one's
    # reason; both None again after the next successful commit (or probe).
    failing_since: float | None = None
    failing_reason: str | None = None
    commit_failures: int = 0  # group commits and probes that failed, since start
    # For metrics (written by the writer thread only; read without a lock).
    commit_seconds: Histogram = field(default_factory=commit_histogram)  # thread-safe
    commit_seconds_sum: float = 0.0  # the drain's busy ratio reads it four times a second
    events_by_stream: dict[tuple[str, str], int] = field(default_factory=dict)  # source, stream
    # (source, munchkin id) -> time.time() of its newest committed event; bounded
    munchkin_seen: dict[tuple[str, str], float] = field(default_factory=dict)
