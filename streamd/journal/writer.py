"""The journal writer: one thread, group commit, dedup decided in the same transaction.

Longer than the house's few hundred lines, for a reason: :class:`JournalWriter` is
one thread's loop, and its invariants (a job is taken or abandoned, never both; a
batch is reported only after the COMMIT holding it; a failed commit is no progress)
hold across every method of it. Its records are in ``records.py``, the writer lock
in ``lock.py``, commit failures in ``failing.py``, dedup in ``dedup.py``.

Requests hand their batch to :meth:`JournalWriter.submit`; the writer thread
takes every batch waiting (up to ``max_events_per_commit``), writes each in
its own savepoint, commits once, and only then reports each batch done. So
many small requests share one fsync, and no request is answered before the
commit that holds it (ack means durable). Which events are duplicates is
decided inside that transaction, against the dedup index plus the keys of
the group so far; the index itself is updated right after (see dedup.py).
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from streamd.errors import JournalBusy, JournalClosed, JournalError, StreamdError
from streamd.journal import counts as counting
from streamd.journal import dedup
from streamd.journal.dedup import (
    DEDUP_PAGE_SIZE,
    DedupIndex,
    Generation,
    Indexer,
    Pending,
    type_code,
)
from streamd.journal.failing import FailingState, describe, journal_wide, probe, rollback
from streamd.journal.lock import hold_writer_lock, lock_path, writer_lock_held
from streamd.journal.records import (
    COMMIT_BUCKETS,
    MAX_MUNCHKINS_TRACKED,
    AppendResult,
    Batch,
    Control,
    Job,
    WriterOptions,
    WriterStatistics,
    commit_histogram,
)
from streamd.journal.schema import connect, journal_id, migrate
from streamd.threads import Thread

_STOP = object()
_OWNER, _DUPLICATE, _OVERFLOW = 0, 1, 2
# A write that changes nothing but takes the journal's write lock (waiting busy_timeout
# for another process's): taken before any job is, so a lock held elsewhere keeps jobs
# queued, where their requests can still abandon them at the commit budget.
_CLAIM = "DELETE FROM main.meta WHERE 0"
_INSERT_DELIVERY = "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_EVENT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# event_counts: (stream, type, munchkin) -> [events, first_seq, last_seq, min_occ, max_occ]
_Counts = dict[tuple[str, str, str], list[Any]]
_PAGE_SIZES = {"main": 4096, "dedup": DEDUP_PAGE_SIZE}
_SAVE_POSITION = """
INSERT INTO pull_positions (source, position, restart, pages, events, accepted, updated_at)
VALUES (?, ?, NULL, 1, ?, ?, ?)
ON CONFLICT (source) DO UPDATE SET
    position = excluded.position,
    restart = NULL,
    pages = pages + 1,
    events = events + excluded.events,
    accepted = accepted + excluded.accepted,
    updated_at = excluded.updated_at
"""


class JournalWriter:
    """Owns the only writing connection to the journal, in its own thread."""

    def __init__(
        self,
        path: str,
        options: WriterOptions,
        now: Callable[[], str],
        notify: Callable[[list[Job | Control]], None] | None = None,
    ) -> None:
        """``notify``, when given, is called once per commit with its jobs and controls
        (one wake-up for the whole group); otherwise each job's ``on_done``."""
        self.path = path
        self._notify = notify
        self.options = options
        self._now = now
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        self._closing = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = Thread(target=self._run, name="journal-writer", daemon=True)
        self._checkpoint_wake = threading.Event()
        self._stopped = threading.Event()
        self._checkpointer = Thread(
            target=self._checkpoint_loop,
            name="journal-checkpoint",
            comm="journal-ckpt",
            daemon=True,
        )
        self.stats = WriterStatistics()
        self._failing = FailingState(self.stats)
        self._next_seq = 1
        self._next_delivery = 1
        self._dedup: DedupIndex
        # Committed keys the indexer has not written yet: the generation this thread is
        # still adding groups to (``_open``), then up to 3 handed over (``_pending``); at
        # most 4 * (index_keys + max_events_per_commit) keys in memory.
        self._pending = Pending(limit=3)
        self._open = Generation()
        self._opened_at = 0.0
        self._type_codes: dict[tuple[str, str | None], int] = {}  # (stream, type) -> code
        # Per-minute counts of committed groups not yet in event_counts (counts.py).
        self._tally: counting.Tally = {}
        self._tallied_since = time.monotonic()
        self._write_tally = False  # the group being committed writes the tally
        self._indexer: Indexer | None = None
        self._disk_checked = 0.0
        self._lock_file: int | None = None
        self.refusal_reason: str | None = None  # set by retention when the size cap is reached
        self.journal_id = ""  # the journal's random id (meta), known once started

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
        # A writer waiting for an indexer that cannot write its file (the backlog full)
        # would wait for good: the indexer is only told to stop once the writer has
        # stopped. What the indexer does not write, the next start indexes again.
        self._pending.release()
        self._thread.join()
        self._stopped.set()
        self._checkpoint_wake.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join()

    def making_progress(self, within: float) -> bool:
        """True unless the writer thread died, or has not finished a successful commit
        (nor been idle with nothing queued) in the last ``within`` seconds.

        A failed commit is no progress: while commits fail, only the writer's own
        idle wake-up (a second with nothing queued) counts, never a moment between
        two requests.
        """
        if not self._thread.is_alive():
            return False
        if time.monotonic() - self.stats.progress_at < within:
            return True
        return self.stats.failing_since is None and self._queued == 0 and self._queue.empty()

    # -- submission (any thread) -------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a batch for the next commit.

        Raises :class:`JournalBusy` when the queue is full or disk is low, and
        :class:`JournalClosed` once closing has begun: the sender must retry.
        """
        n = len(job.batch.events)
        with self._lock:
            refused = self._refusal(n)
            if refused is not None:
                raise refused
            self._queued += n
            self.stats.queued_events = self._queued
        self._queue.put(job)

    def refusal(self, events: int = 1) -> JournalBusy | None:
        """Why a batch of ``events`` would be refused now (None: it would be queued).

        For a request to find out before it reads and decodes a body that could only
        be refused (a full queue, low disk, closing): the answer may be stale by the
        time the batch is submitted, which decides.
        """
        return self._refusal(events)

    def _refusal(self, n: int) -> JournalBusy | None:
        limit = self.options.max_queued_events
        if self._closing:
            return JournalClosed("streamd is shutting down", retry_after=10)
        if self.stats.low_disk:
            return JournalBusy(
                "free disk space is below the configured floor", retry_after=60, reason="low_disk"
            )
        if self.refusal_reason is not None:
            return JournalBusy(self.refusal_reason, retry_after=60, reason="journal_full")
        if n > limit:
            # Never admitted, even into an empty queue: the bound holds for every batch
            # (ingest caps a request below it; a pull splits its pages).
            return JournalBusy(
                f"a batch of {n} events is more than journal.max_queued_events ({limit}) allows",
                retry_after=2,
                reason="queue_full",
            )
        if self._queued + n > limit:
            return JournalBusy(
                "the journal writer queue is full", retry_after=2, reason="queue_full"
            )
        return None

    def abandon(self, job: Job) -> bool:
        """Withdraw a submitted job unless the writer has taken it; True if withdrawn.

        One decision under the writer's lock: an abandoned job is never written; a
        job already taken will be committed (or fail), and its submitter must wait
        for that outcome, so a batch that committed is never reported as not.
        """
        with self._lock:
            if job.taken:
                return False
            job.abandoned = True
            return True

    def submit_control(self, control: Control) -> None:
        """Queue a control op for the next group transaction (never refused for a full
        queue: controls are small, and they are how the drain frees journal space).

        Raises :class:`JournalClosed` once closing has begun.
        """
        with self._lock:
            if self._closing:
                raise JournalClosed("streamd is shutting down", retry_after=10)
            # Under the lock: never behind the stop marker, where it would wait forever.
            self._queue.put(control)

    # -- the writer thread -------------------------------------------------
    def _run(self) -> None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._lock_file = hold_writer_lock(self.path)
            journal_cache, index_cache = page_caches(self.options.cache_mib)
            conn = connect(self.path, synchronous=self.options.synchronous, cache_mib=journal_cache)
            # When a checkpoint lets the WAL restart, trim the file to this size.
            conn.execute(f"PRAGMA journal_size_limit = {self.options.wal_max_bytes}")
        except BaseException as exc:
            self._release_lock()
            self._fail_start(exc)
            return
        try:
            migrate(conn, self.path, self._now())
            self._dedup = DedupIndex(conn, self.path, index_cache)
            self.journal_id = journal_id(conn)
            self.stats.reindexed = self._dedup.open(self.journal_id)
            self._indexer = Indexer(
                self._dedup.path, self._pending, index_cache, self.options.index_stop_grace
            )
            self._indexer.start()
            self._next_seq = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM events"
            ).fetchone()[0]
            self._next_delivery = conn.execute(
                "SELECT coalesce(max(id), 0) + 1 FROM deliveries"
            ).fetchone()[0]
            counting.catch_up(conn, self._next_seq - 1)  # what a crash left uncounted
            self._check_disk(force=True)
        except BaseException as exc:
            if self._indexer is not None:
                self._indexer.stop()
            conn.close()
            self._release_lock()
            self._fail_start(exc)
            return
        self.stats.last_seq = self._next_seq - 1
        self._started.set()
        try:
            stopping = False
            while not stopping:
                jobs: list[Job | Control] = []
                try:
                    # Wake now and then even when idle: a low-disk state refuses every
                    # batch, and failing commits need a probe, to find out by
                    # themselves when the problem is gone.
                    first = self._queue.get(timeout=1.0)
                except queue.Empty:
                    if self.stats.failing_since is not None:
                        self._probe(conn)
                    elif self._tally:
                        self._flush_tally(conn)  # idle: nothing to write it with
                    self._hand_over_if_due()  # idle: the index file catches up
                    if self._queue.empty():
                        self.stats.progress_at = time.monotonic()  # idle, nothing queued
                    self._check_disk()
                    continue
                if first is _STOP:
                    break
                assert isinstance(first, Job | Control)
                jobs.append(first)
                events = len(first.batch.events) if isinstance(first, Job) else 0
                while events < self.options.max_events_per_commit:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stopping = True
                        break
                    assert isinstance(nxt, Job | Control)
                    jobs.append(nxt)
                    if isinstance(nxt, Job):
                        events += len(nxt.batch.events)
                if self._commit(conn, jobs):
                    self.stats.progress_at = time.monotonic()
                self._check_disk()
            if self._tally:
                self._flush_tally(conn)
        finally:
            if self._indexer is not None:
                self._hand_over()  # never waits: close() released the backlog
                self._indexer.stop()  # index what is pending before the checkpoint
            conn.close()
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)  # closing the descriptor releases the flock
            self._lock_file = None

    def _fail_start(self, exc: BaseException) -> None:
        self._start_error = (
            exc if isinstance(exc, JournalError) else JournalError(f"{self.path}: {exc}")
        )
        self._started.set()

    def _commit(self, conn: sqlite3.Connection, items: list[Job | Control]) -> bool:
        """Write one group in one transaction and report each item's outcome.

        Returns True when a transaction that wrote something committed (progress);
        False when the commit failed, or every batch had been abandoned before the
        writer took it.
        """
        jobs = [item for item in items if isinstance(item, Job)]
        controls = [item for item in items if isinstance(item, Control)]
        started = time.monotonic()
        seq0, delivery0 = self._next_seq, self._next_delivery
        group = Generation()
        # Copy the pending generations *before* the index read begins (dedup.py); the
        # open one only this thread changes, after this commit.
        earlier = self._pending.snapshot()
        earlier.append(self._open)
        counts: dict[tuple[str, str, str, str, str], list[Any]] = {}
        self._write_tally = (
            time.monotonic() - self._tallied_since >= self.options.counts_interval
            or len(self._tally) >= counting.MAX_TALLY
        )
        committed = False
        try:
            try:
                self._commit_together(conn, jobs, controls, group, earlier, counts)
            except sqlite3.Error as exc:
                rollback(conn)
                if journal_wide(exc) or not any(job.taken for job in jobs):
                    raise  # the journal cannot be written now: the whole group fails
                # Which batch failed is unknown: start over, each batch in its own
                # savepoint, so only the failing one is refused.
                self._next_seq, self._next_delivery = seq0, delivery0
                group = Generation()
                counts.clear()
                for job in jobs:
                    job.result = None
                self._commit_each(conn, jobs, controls, group, earlier, counts)
            committed = True
        except Exception as exc:  # sqlite3.Error, or a bug: never a dead writer thread
            # The whole transaction is lost: nothing of any batch in it is acknowledged.
            rollback(conn)
            self._next_seq, self._next_delivery = seq0, delivery0
            self._failed(exc)
            error = JournalError(f"the journal commit failed: {describe(exc)}")
            for job in jobs:
                job.result = None
                job.error = error
            for control in controls:
                control.result = None
                control.error = error
        finally:
            wrote = committed and (bool(controls) or any(job.taken for job in jobs))
            elapsed = time.monotonic() - started
            with self._lock:
                self._queued -= sum(len(job.batch.events) for job in jobs)
                self.stats.queued_events = self._queued
            self.stats.controls += len(controls)
            if wrote:
                self.stats.commits += 1
                self.stats.last_seq = self._next_seq - 1
                self.stats.last_commit_seconds = elapsed
                self.stats.max_commit_seconds = max(self.stats.max_commit_seconds, elapsed)
                self._observe(elapsed, counts)
                self._failing.recovered()
                if self._write_tally:  # written with this group
                    self._tally = {}
                    self._tallied_since = time.monotonic()
                else:
                    counting.merge(self._tally, counts)
            for job in jobs:
                if job.result is not None:
                    self.stats.batches += 1
                    self.stats.events += job.result.accepted
                    self.stats.duplicates += job.result.duplicates
                elif job.error is None:  # pragma: no cover - every path sets one
                    job.error = JournalError("the batch was not journaled")
            if self._notify is not None:
                self._notify(items)
            else:
                for job in jobs:
                    if job.on_done is not None:
                        job.on_done(job)
            if committed and (group.owners or group.overflow):
                # Before the next group's snapshot (this thread takes it): it must see
                # these keys, indexed or not; a sender's retry after the ack lands there.
                # After the acks: when the indexer falls behind (it cannot write its
                # file, say on a full disk) the hand-over waits, and holds back the next
                # group, never the answer for a batch that committed.
                group.covered_seq = self._next_seq - 1
                self._collect(group)
            self._checkpoint_wake.set()
        return wrote

    def _collect(self, group: Generation) -> None:
        """Add a committed group's keys to the open generation; hand that to the indexer
        once it holds ``index_keys`` keys or is ``index_interval`` seconds old.

        Why not each group on its own: every random key the indexer inserts rewrites a
        1 KiB page of the index (a WAL frame, then a checkpoint), so 20,000 keys at once
        rewrite each page once where groups of 150 rewrote it again and again
        (ARCHITECTURE.md, "Keys indexed in generations of 20,000").
        """
        group.keys = {}  # committed: an earlier claim's key is read from the journal
        o = self._open
        if not o.owners and not o.overflow:
            self._open, self._opened_at = group, time.monotonic()
        else:
            o.owners.update(group.owners)
            o.overflow.update(group.overflow)
            o.leads.extend(group.leads)
            types = o.types
            for code, seqs in group.types.items():
                into = types.get(code)
                if into is None:
                    types[code] = seqs
                else:
                    into.extend(seqs)
            o.type_names.update(group.type_names)
            o.covered_seq = group.covered_seq
        o = self._open
        if len(o.owners) + len(o.overflow) >= self.options.index_keys:
            self._hand_over()
        else:
            self._hand_over_if_due()

    def _hand_over_if_due(self) -> None:
        """The open generation to the indexer once it is ``index_interval`` seconds old."""
        if time.monotonic() - self._opened_at >= self.options.index_interval:
            self._hand_over()

    def _hand_over(self) -> None:
        """The open generation to the indexer (waits while 3 are pending, until close)."""
        if self._open.owners or self._open.overflow:
            self._pending.push(self._open)
            self._open = Generation()

    def _take(self, jobs: list[Job]) -> list[Job]:
        """Take every job not abandoned yet; once taken, a job can no longer be
        (:meth:`abandon`). Called holding the journal's write lock, right before the
        jobs are written."""
        with self._lock:
            for job in jobs:
                if not job.abandoned:
                    job.taken = True
        live = []
        for job in jobs:
            if job.taken:
                live.append(job)
            else:  # its request already answered 503; the sender will retry
                job.error = JournalBusy("abandoned before commit")
        return live

    def _probe(self, conn: sqlite3.Connection) -> None:
        """While commits fail and nothing waits: find out whether they would succeed."""
        try:
            probe(conn)
        except sqlite3.Error as exc:
            self._failed(exc)
        else:
            self._failing.recovered()
        # A checkpoint that completes lets the WAL start over inside the space it
        # already has: how a WAL at a file size limit or a full disk recovers.
        self._checkpoint_wake.set()

    def _failed(self, exc: BaseException) -> None:
        self._note_error(f"commit failed: {self._failing.failed(exc)}")

    def _observe(
        self, elapsed: float, counts: dict[tuple[str, str, str, str, str], list[Any]]
    ) -> None:
        stats = self.stats
        stats.commit_seconds.observe(elapsed)
        stats.commit_seconds_sum += elapsed
        if not counts:
            return
        now = time.time()
        by_stream, seen = stats.events_by_stream, stats.munchkin_seen
        for (_, source, stream, _, munchkin), c in counts.items():
            by_stream[(source, stream)] = by_stream.get((source, stream), 0) + c[0]
            if munchkin and ((source, munchkin) in seen or len(seen) < MAX_MUNCHKINS_TRACKED):
                seen[(source, munchkin)] = now

    def _lookup(self, live: list[Job]) -> dict[int, int]:
        """The owners already in the index of every key of ``live``, read *before* BEGIN.

        Its own short read transaction: the lookup's ``json_each`` opens a read snapshot of
        every attached file, and a transaction that holds one of ``journal.db`` when it
        first writes gets "database is locked" at once if another connection writes (it
        cannot wait: its snapshot would be stale). Read before BEGIN, the INSERT waits
        ``busy_timeout`` as before. Safe: ``earlier`` (the pending generations) was copied
        before this read began, and only this thread adds keys.
        """
        return self._dedup.lookup(
            list({r.key_hash: None for job in live for r in job.batch.events})
        )

    def _commit_together(
        self,
        conn: sqlite3.Connection,
        jobs: list[Job],
        controls: list[Control],
        group: Generation,
        earlier: list[Generation],
        counts: dict[tuple[str, str, str, str, str], list[Any]],
    ) -> None:
        """The whole group in one transaction with one statement per table.

        One dedup lookup and one ``executemany`` per table instead of five
        statements per batch: for small batches the per-statement cost (and the
        GIL hand-over each statement means) was most of the writer's time.
        Raises ``sqlite3.Error`` (state then to be reset by the caller).
        """
        # Looked up for every job not abandoned so far; which are written is decided
        # only once the write lock is held (_take).
        known = self._lookup([job for job in jobs if not job.abandoned])
        # DEFERRED: the write lock is needed on the journal only, never on the index,
        # which the indexer thread writes meanwhile.
        conn.execute("BEGIN")
        conn.execute(_CLAIM)
        live = self._take(jobs)
        if not live and not controls:
            conn.execute("ROLLBACK")  # every batch was abandoned meanwhile
            return
        deliveries: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        for job in live:
            batch_counts: _Counts = {}
            job.result = self._plan(
                job.batch, group, earlier, known, [], [], batch_counts, deliveries, rows
            )
            _merge_counts(counts, job.batch, batch_counts)
        conn.executemany(_INSERT_DELIVERY, deliveries)
        if rows:
            conn.executemany(_INSERT_EVENT, rows)
        _save_positions(conn, live)
        self._finish_group(conn, counts, controls)

    def _commit_each(
        self,
        conn: sqlite3.Connection,
        jobs: list[Job],
        controls: list[Control],
        group: Generation,
        earlier: list[Generation],
        counts: dict[tuple[str, str, str, str, str], list[Any]],
    ) -> None:
        """The group again, each batch in its own savepoint: a failing one takes only itself.

        Raises ``sqlite3.Error`` when the journal itself cannot be written (then no
        batch of the group is).
        """
        live = [job for job in jobs if job.taken]
        known = self._lookup(live)
        conn.execute("BEGIN")
        conn.execute(_CLAIM)
        for job in live:
            conn.execute("SAVEPOINT batch")
            added: list[int] = []
            overflowed: list[str] = []
            batch_counts: _Counts = {}
            leads_before = len(group.leads)
            types_before = {code: len(seqs) for code, seqs in group.types.items()}
            try:
                job.result = self._write(
                    conn, job.batch, group, earlier, known, added, overflowed, batch_counts
                )
                conn.execute("RELEASE batch")
                _merge_counts(counts, job.batch, batch_counts)
            except sqlite3.Error as exc:
                if journal_wide(exc):
                    raise
                conn.execute("ROLLBACK TO batch")
                conn.execute("RELEASE batch")
                for h in added:
                    del group.owners[h]
                    del group.keys[h]
                for key in overflowed:
                    del group.overflow[key]
                del group.leads[leads_before:]
                for code, seqs in list(group.types.items()):
                    if code in types_before:
                        del seqs[types_before[code] :]
                    else:
                        del group.types[code]
                job.result = None
                job.error = JournalError(f"cannot journal the batch: {exc}")
                self._note_error(f"batch from {job.batch.source}: {exc}")
        self._finish_group(conn, counts, controls)

    def _finish_group(
        self,
        conn: sqlite3.Connection,
        counts: dict[tuple[str, str, str, str, str], list[Any]],
        controls: list[Control],
    ) -> None:
        """The tally with this group's counts when it is due (else they join the tally
        once committed), the control ops, then COMMIT (results are released by
        ``_commit`` only after it: ack means durable)."""
        if self._write_tally:
            counting.write(conn, counting.merged_rows(self._tally, counts), self._next_seq - 1)
        _run_controls(conn, controls)
        conn.execute("COMMIT")

    def _flush_tally(self, conn: sqlite3.Connection) -> None:
        """The tally in a transaction of its own (idle, or stopping). On failure it stays
        in memory, and a start counts what it held from the journal anyway."""
        try:
            conn.execute("BEGIN")
            conn.execute(_CLAIM)
            rows = [(*key, *c) for key, c in self._tally.items()]
            counting.write(conn, rows, self._next_seq - 1)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(conn)
            self._note_error(f"per-minute counts not written yet: {describe(exc)}")
            return
        self._tally = {}
        self._tallied_since = time.monotonic()

    def _write(
        self,
        conn: sqlite3.Connection,
        batch: Batch,
        group: Generation,
        earlier: list[Generation],
        known: dict[int, int],
        added: list[int],
        overflowed: list[str],
        counts: _Counts,
    ) -> AppendResult:
        """Decide and insert one batch (inside its savepoint)."""
        deliveries: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        result = self._plan(
            batch, group, earlier, known, added, overflowed, counts, deliveries, rows
        )
        conn.executemany(_INSERT_DELIVERY, deliveries)
        if rows:
            conn.executemany(_INSERT_EVENT, rows)
        if batch.position is not None:
            conn.execute(_SAVE_POSITION, _position_row(batch, result))
        return result

    def _plan(
        self,
        batch: Batch,
        group: Generation,
        earlier: list[Generation],
        known: dict[int, int],
        added: list[int],
        overflowed: list[str],
        counts: _Counts,
        deliveries: list[tuple[Any, ...]],
        rows: list[tuple[Any, ...]],
    ) -> AppendResult:
        """Decide each event of a batch (owner, duplicate, collision) and build its rows.

        Appends the delivery row to ``deliveries`` and the new events to ``rows``;
        claims the new keys in ``group`` (listed in ``added``/``overflowed`` so a
        failed batch can give them back). ``known`` maps the hashes of the batch
        already in the index to their owners' seq.
        """
        events = batch.events
        delivery = self._next_delivery
        seq = self._next_seq
        first = len(rows)
        owners, keys = group.owners, group.keys
        earlier_owners = [g.owners for g in earlier]
        type_codes, type_names, types = self._type_codes, group.type_names, group.types
        # The same id twice in one batch needs no pass of its own: the first claims its
        # hash in ``group``, so the second finds the claim and is a duplicate (or, after
        # a collision, finds its key in ``group.overflow``).
        for record in events:
            h, key = record.key_hash, record.key
            owner = known.get(h)
            verdict = _OWNER  # the common case, decided without building claims
            if owner is not None or h in owners:
                verdict = self._verdict(h, key, owner, group, earlier)
            else:
                # A plain loop: any() over a generator cost ~10% of the writer's GIL
                # time here (py-spy --gil, legacy-500 c16), one generator per event.
                for o in earlier_owners:
                    if h in o:
                        verdict = self._verdict(h, key, owner, group, earlier)
                        break
            if verdict == _DUPLICATE:
                continue
            if verdict == _OWNER:
                owners[h] = seq
                keys[h] = key
                added.append(h)
            else:
                # A distinct key whose 64-bit hash is taken: journal it, keyed by full text.
                group.overflow[key] = seq
                overflowed.append(key)
            if record.lead_id is not None:
                group.leads.append((record.lead_id, seq))
            tk = (record.stream, record.type)
            code = type_codes.get(tk)
            if code is None:
                if len(type_codes) >= dedup.MAX_TYPE_CODES:
                    type_codes.clear()  # a flood of distinct types: only hashing again
                code = type_codes[tk] = type_code(*tk)
            seqs = types.get(code)
            if seqs is None:
                types[code] = seqs = []
                type_names[code] = tk
            seqs.append(seq)
            occurred = record.occurred_at
            ck = (record.stream, record.type or "", record.munchkin_id or "")
            c = counts.get(ck)
            if c is None:
                counts[ck] = [1, seq, seq, occurred, occurred]
            else:
                c[0] += 1
                c[2] = seq
                if occurred is not None:
                    if c[3] is None or occurred < c[3]:
                        c[3] = occurred
                    if c[4] is None or occurred > c[4]:
                        c[4] = occurred
            rows.append(
                (
                    seq,
                    key,
                    record.stream,
                    record.type,
                    record.munchkin_id,
                    record.activity_type_id,
                    record.lead_id,
                    occurred,
                    batch.received_at,
                    batch.source,
                    delivery,
                    record.raw,
                )
            )
            seq += 1
        accepted = len(rows) - first
        duplicates = len(events) - accepted
        deliveries.append(
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
            )
        )
        self._next_seq = seq
        self._next_delivery = delivery + 1
        return AppendResult(accepted=accepted, duplicates=duplicates, delivery=delivery)

    def _verdict(
        self, h: int, key: str, owner: int | None, group: Generation, earlier: list[Generation]
    ) -> int:
        """Is ``key`` the new owner of hash ``h``, a duplicate, or a collision?"""
        claims = [group.keys[h]] if h in group.owners else []
        # An earlier generation's claims and the index's owner are committed events:
        # their keys are in the journal.
        committed = [g.owners[h] for g in earlier if h in g.owners]
        if owner is not None:
            committed.append(owner)
        if not claims and not committed:
            return _OWNER
        if key in claims or any(self._dedup.key_of(seq) == key for seq in committed):
            return _DUPLICATE
        if any(key in g.overflow for g in (group, *earlier)) or self._dedup.in_overflow(key):
            return _DUPLICATE  # a duplicate of an earlier collision
        return _OVERFLOW

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
            conn.execute("ATTACH DATABASE ? AS dedup", (self._dedup.path,))
        except (JournalError, sqlite3.Error) as exc:
            self._note_error(f"checkpoints disabled: {exc}")
            return
        try:
            while True:
                self._checkpoint_wake.wait()
                self._checkpoint_wake.clear()
                closing = self._stopped.is_set()
                if closing:
                    self._checkpoint(conn, "TRUNCATE")
                    return
                # PASSIVE never blocks the writer, but under steady load it never
                # catches the WAL's end either, so the WAL would only grow. Past
                # wal_max_bytes, RESTART (most frames are already copied, so it
                # holds the writer only briefly) makes the next commit start the
                # WAL over; journal_size_limit then trims the file.
                wal_bytes = self._checkpoint(conn, "PASSIVE")
                if wal_bytes > self.options.wal_max_bytes:
                    self._checkpoint(conn, "RESTART")
                # Bound checkpoint frequency; commits in between only set the flag.
                self._stopped.wait(self.options.checkpoint_interval)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> int:
        """Checkpoint the journal and the dedup index; return the larger WAL in bytes."""
        wal_bytes = 0
        for schema in ("main", "dedup"):
            try:
                _, log, _ = conn.execute(f"PRAGMA {schema}.wal_checkpoint({mode})").fetchone()
            except sqlite3.Error as exc:
                self._note_error(f"checkpoint ({schema}, {mode}) failed: {exc}")
                continue
            self.stats.checkpoints += 1
            wal_bytes = max(wal_bytes, log * _PAGE_SIZES[schema])
        return wal_bytes


def page_caches(cache_mib: int) -> tuple[int, int]:
    """SQLite page caches (MiB) of the journal connection and of each of the index
    file's two connections, out of ``journal.cache_mib``: a half and a quarter each.

    The journal's pages are appended and hardly read again, so its cache mostly holds
    pages already written: at a half, as much I/O and CPU per event as with all of it,
    for 12 MiB less RSS at the default (ARCHITECTURE.md, "The journal connection's page
    cache"). The index's lookups and inserts land on random pages and do use theirs; a
    page either cache misses is read from the OS page cache, which is not our RSS."""
    return max(1, cache_mib // 2), max(1, cache_mib // 4)


def _merge_counts(
    into: dict[tuple[str, str, str, str, str], list[Any]], batch: Batch, counts: _Counts
) -> None:
    """Add one committed batch's counts to its group's, keyed by minute and source."""
    minute = batch.received_at[:16]  # YYYY-MM-DDTHH:MM
    for (stream, type_, munchkin), c in counts.items():
        counting.add(into, (minute, batch.source, stream, type_, munchkin), c)


def _position_row(batch: Batch, result: AppendResult) -> tuple[Any, ...]:
    events, accepted = batch.page_tally
    return (
        batch.source,
        batch.position,
        events + len(batch.events),
        accepted + result.accepted,
        batch.received_at,
    )


def _save_positions(conn: sqlite3.Connection, jobs: list[Job]) -> None:
    """The pull sources' positions, in the transaction of the events they brought."""
    rows = [
        _position_row(job.batch, job.result)
        for job in jobs
        if job.batch.position is not None and job.result is not None
    ]
    if rows:
        conn.executemany(_SAVE_POSITION, rows)


def _run_controls(conn: sqlite3.Connection, controls: list[Control]) -> None:
    """Each control op in its own savepoint: a failing one takes only itself."""
    for control in controls:
        control.result = None
        control.error = None
        conn.execute("SAVEPOINT control")
        try:
            control.result = control.op(conn)
            conn.execute("RELEASE control")
        except Exception as exc:  # sqlite3.Error, the op's refusal, a bug: it fails alone
            conn.execute("ROLLBACK TO control")
            conn.execute("RELEASE control")
            control.result = None
            # The op's own errors (an operator's refusal) keep their kind and status.
            control.error = exc if isinstance(exc, StreamdError) else JournalError(f"{exc}")


__all__ = [
    "COMMIT_BUCKETS",
    "MAX_MUNCHKINS_TRACKED",
    "AppendResult",
    "Batch",
    "Control",
    "Job",
    "JournalWriter",
    "WriterOptions",
    "WriterStatistics",
    "commit_histogram",
    "hold_writer_lock",
    "lock_path",
    "writer_lock_held",
]
