"""The journal writer: one thread, group commit, dedup in the same transaction.

Requests hand their batch to :meth:`JournalWriter.submit`; the writer thread
takes every batch waiting (up to ``max_events_per_commit``), writes each in
its own savepoint, commits once, and only then reports each batch done. So
many small requests share one fsync, and no request is answered before the
commit that holds it (ack means durable).
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from streamd.core.wire import EventRecord
from streamd.errors import JournalBusy, JournalClosed, JournalError
from streamd.journal.schema import Synchronous, connect, migrate

_IN_CHUNK = 500  # keys per "IN (...)" lookup; well under SQLITE_MAX_VARIABLE_NUMBER


@dataclass(frozen=True, slots=True)
class WriterOptions:
    """Tuning of the writer; every bound is explicit."""

    synchronous: Synchronous = "full"
    cache_mib: int = 32
    max_events_per_commit: int = 20_000
    max_queued_events: int = 200_000
    min_free_disk_bytes: int = 256 * 1024 * 1024
    checkpoint_interval: float = 1.0
    wal_truncate_bytes: int = 256 * 1024 * 1024


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


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What a committed batch did: new events, duplicates, the delivery row id."""

    accepted: int
    duplicates: int
    delivery: int


@dataclass(slots=True, eq=False)
class Job:
    """A batch waiting for the writer, and its outcome once committed."""

    batch: Batch
    on_done: Callable[[Job], None]
    result: AppendResult | None = None
    error: BaseException | None = None
    abandoned: bool = False


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
    errors: list[str] = field(default_factory=list)


_STOP = object()


class JournalWriter:
    """Owns the only writing connection to the journal, in its own thread."""

    def __init__(self, path: str, options: WriterOptions, now: Callable[[], str]) -> None:
        self.path = path
        self.options = options
        self._now = now
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        self._closing = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._checkpoint_wake = threading.Event()
        self._stopped = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="journal-checkpoint", daemon=True
        )
        self.stats = WriterStatistics()
        self._next_seq = 1
        self._next_delivery = 1
        self._disk_checked = 0.0

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Open and migrate the journal in the writer thread; return once it is ready.

        Raises :class:`JournalError` when the journal cannot be opened.
        """
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        self._checkpointer.start()

    def close(self) -> None:
        """Commit everything queued, checkpoint, and stop the threads (blocking)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._queue.put(_STOP)
        self._thread.join()
        self._stopped.set()
        self._checkpoint_wake.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join()

    # -- submission (any thread) -------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a batch for the next commit.

        Raises :class:`JournalBusy` when the queue is full or disk is low, and
        :class:`JournalClosed` once closing has begun: the sender must retry.
        """
        n = len(job.batch.events)
        with self._lock:
            if self._closing:
                raise JournalClosed("streamd is shutting down", retry_after=10)
            if self.stats.low_disk:
                raise JournalBusy("free disk space is below the configured floor", retry_after=60)
            if self._queued and self._queued + n > self.options.max_queued_events:
                raise JournalBusy("the journal writer queue is full", retry_after=2)
            self._queued += n
            self.stats.queued_events = self._queued
        self._queue.put(job)

    # -- the writer thread -------------------------------------------------
    def _run(self) -> None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = connect(
                self.path, synchronous=self.options.synchronous, cache_mib=self.options.cache_mib
            )
            migrate(conn, self.path, self._now())
            self._next_seq = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM events"
            ).fetchone()[0]
            self._next_delivery = conn.execute(
                "SELECT coalesce(max(id), 0) + 1 FROM deliveries"
            ).fetchone()[0]
            self._check_disk(force=True)
        except BaseException as exc:
            self._start_error = (
                exc if isinstance(exc, JournalError) else JournalError(f"{self.path}: {exc}")
            )
            self._started.set()
            return
        self._started.set()
        try:
            stopping = False
            while not stopping:
                jobs: list[Job] = []
                first = self._queue.get()
                if first is _STOP:
                    break
                assert isinstance(first, Job)
                jobs.append(first)
                events = len(first.batch.events)
                while events < self.options.max_events_per_commit:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stopping = True
                        break
                    assert isinstance(nxt, Job)
                    jobs.append(nxt)
                    events += len(nxt.batch.events)
                self._commit(conn, jobs)
                self._check_disk()
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, jobs: list[Job]) -> None:
        started = time.monotonic()
        seq0, delivery0 = self._next_seq, self._next_delivery
        done: list[Job] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                if job.abandoned:
                    # The request already answered 503; the sender will retry.
                    job.error = JournalBusy("abandoned before commit")
                    continue
                conn.execute("SAVEPOINT batch")
                try:
                    job.result = self._write(conn, job.batch)
                    conn.execute("RELEASE batch")
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO batch")
                    conn.execute("RELEASE batch")
                    job.result = None
                    job.error = JournalError(f"cannot journal the batch: {exc}")
                    self._note_error(f"batch from {job.batch.source}: {exc}")
            conn.execute("COMMIT")  # ack only after COMMIT: results are released below
            done = jobs
        except sqlite3.Error as exc:
            # The whole transaction is lost: nothing of any batch in it is acknowledged.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._next_seq, self._next_delivery = seq0, delivery0
            self._note_error(f"commit failed: {exc}")
            error = JournalError(f"the journal commit failed: {exc}")
            for job in jobs:
                job.result = None
                job.error = error
            done = jobs
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                self._queued -= sum(len(job.batch.events) for job in jobs)
                self.stats.queued_events = self._queued
            self.stats.commits += 1
            self.stats.last_commit_seconds = elapsed
            self.stats.max_commit_seconds = max(self.stats.max_commit_seconds, elapsed)
            for job in done:
                if job.result is not None:
                    self.stats.batches += 1
                    self.stats.events += job.result.accepted
                    self.stats.duplicates += job.result.duplicates
                job.on_done(job)
            self._checkpoint_wake.set()

    def _write(self, conn: sqlite3.Connection, batch: Batch) -> AppendResult:
        events = batch.events
        fresh: dict[str, EventRecord] = {}
        for record in events:
            fresh.setdefault(record.key, record)  # the same id twice in one batch
        owners = self._lookup(conn, [r.key_hash for r in fresh.values()])
        claimed: set[int] = set()  # hashes taken by earlier new events of this batch
        delivery = self._next_delivery
        seq = self._next_seq
        rows = []
        dedup_rows = []
        overflow_rows = []
        for record in fresh.values():
            owner = owners.get(record.key_hash)
            if owner is None and record.key_hash not in claimed:
                claimed.add(record.key_hash)
                dedup_rows.append((record.key_hash, seq))
            elif owner is not None and self._same_key(conn, owner, record.key):
                continue  # a duplicate: already journaled
            elif self._in_overflow(conn, record.key):
                continue  # a duplicate of an earlier collision
            else:
                # A distinct key whose 64-bit hash is taken: journal it, keyed by full text.
                overflow_rows.append((record.key, seq))
            rows.append(
                (
                    seq,
                    record.key,
                    record.stream,
                    record.type,
                    record.munchkin_id,
                    record.activity_type_id,
                    record.lead_id,
                    record.occurred_at,
                    batch.received_at,
                    batch.source,
                    delivery,
                    record.raw,
                )
            )
            seq += 1
        accepted = len(rows)
        duplicates = len(events) - accepted
        conn.execute(
            "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                delivery,
                batch.received_at,
                batch.source,
                batch.shape,
                batch.message_id,
                batch.adobe_event_id,
                batch.retry_count,
                len(events),
                accepted,
                duplicates,
            ),
        )
        if rows:
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if dedup_rows:
            conn.executemany("INSERT INTO dedup VALUES (?, ?)", dedup_rows)
        if overflow_rows:
            conn.executemany("INSERT INTO dedup_overflow VALUES (?, ?)", overflow_rows)
        self._next_seq = seq
        self._next_delivery = delivery + 1
        return AppendResult(accepted=accepted, duplicates=duplicates, delivery=delivery)

    @staticmethod
    def _in_overflow(conn: sqlite3.Connection, key: str) -> bool:
        row = conn.execute("SELECT 1 FROM dedup_overflow WHERE event_key = ?", (key,)).fetchone()
        return row is not None

    @staticmethod
    def _lookup(conn: sqlite3.Connection, hashes: list[int]) -> dict[int, int]:
        owners: dict[int, int] = {}
        for i in range(0, len(hashes), _IN_CHUNK):
            chunk = hashes[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            owners.update(
                conn.execute(
                    f"SELECT key_hash, seq FROM dedup WHERE key_hash IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchall()
            )
        return owners

    @staticmethod
    def _same_key(conn: sqlite3.Connection, seq: int, key: str) -> bool:
        row = conn.execute("SELECT event_key FROM events WHERE seq = ?", (seq,)).fetchone()
        return row is not None and row[0] == key

    def _check_disk(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._disk_checked < 1.0:
            return
        self._disk_checked = now
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return
        self.stats.low_disk = st.f_bavail * st.f_frsize < self.options.min_free_disk_bytes

    def _note_error(self, message: str) -> None:
        self.stats.errors = [*self.stats.errors[-9:], message]

    # -- the checkpoint thread ---------------------------------------------
    def _checkpoint_loop(self) -> None:
        try:
            conn = connect(self.path, synchronous=self.options.synchronous, cache_mib=2)
        except JournalError as exc:
            self._note_error(str(exc))
            return
        wal = self.path + "-wal"
        try:
            while True:
                self._checkpoint_wake.wait()
                self._checkpoint_wake.clear()
                closing = self._stopped.is_set()
                try:
                    size = os.path.getsize(wal)
                except OSError:
                    size = 0
                mode = (
                    "TRUNCATE" if closing or size > self.options.wal_truncate_bytes else "PASSIVE"
                )
                try:
                    conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                    self.stats.checkpoints += 1
                except sqlite3.Error as exc:
                    self._note_error(f"checkpoint ({mode}) failed: {exc}")
                if closing:
                    return
                # Bound checkpoint frequency; commits in between only set the flag.
                self._stopped.wait(self.options.checkpoint_interval)
        finally:
            conn.close()
