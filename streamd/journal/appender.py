"""The async face of the writer: ``await journal.append(batch)`` returns after COMMIT."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar, cast

import trio

from streamd.clock import utc_now
from streamd.errors import CommitTimeout, JournalBusy, JournalError, StreamdError
from streamd.journal.writer import (
    AppendResult,
    Batch,
    Control,
    Job,
    JournalWriter,
    WriterOptions,
    WriterStatistics,
)

T = TypeVar("T")


class Journal:
    """An open journal that requests append batches to; one per process."""

    def __init__(self, writer: JournalWriter, commit_budget: float) -> None:
        self._writer = writer
        self._budget = commit_budget
        self.path = writer.path
        self.journal_id = writer.journal_id  # the writer has started: it knows it
        self._committed = trio.Event()

    @property
    def last_seq(self) -> int:
        """The highest committed ``events.seq``."""
        return self._writer.stats.last_seq

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event with a sequence above ``seq`` is committed.

        Woken by the writer's per-commit notification: no polling, so an idle
        reader costs no CPU.
        """
        while self._writer.stats.last_seq <= seq:
            await self._committed.wait()

    def _on_commit(self) -> None:  # in the trio thread, once per commit
        event, self._committed = self._committed, trio.Event()
        event.set()

    async def control(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in the writer thread inside its next group transaction; return its
        result once that transaction committed.

        Raises :class:`JournalClosed` when the journal is closing and
        :class:`JournalError` when the op or the commit failed.
        """
        done = trio.Event()
        control = Control(op=op, waiter=done)
        self._writer.submit_control(control)
        # Shielded: once queued, the op will run; the caller must learn its outcome.
        with trio.CancelScope(shield=True):
            await done.wait()
        if control.error is not None:
            if isinstance(control.error, StreamdError):  # the op's own refusal, or ours
                raise control.error
            raise JournalError(f"{control.error}") from control.error
        return cast(T, control.result)

    async def append(self, batch: Batch) -> AppendResult:
        """Journal a batch atomically and return once it is durably committed.

        Raises :class:`JournalBusy` (queue full, low disk, closing),
        :class:`CommitTimeout` when the writer had not taken the batch within the
        commit budget (it is then never written), and :class:`JournalError` when the
        commit failed. In every case nothing was journaled and the sender must retry.

        A batch the writer took before the budget ran out is waited for: its commit
        decides the answer, so a batch that committed is never reported as failed.
        """
        done = trio.Event()
        job = Job(batch=batch, waiter=done)
        self._writer.submit(job)
        try:
            with trio.move_on_after(self._budget):
                await done.wait()
            if not done.is_set():
                if self._writer.abandon(job):
                    raise CommitTimeout(
                        f"the journal did not commit within {self._budget:g} s", retry_after=5
                    )
                # Taken: the writer is committing it now; its outcome is the answer.
                await done.wait()
        except trio.Cancelled:
            self._writer.abandon(job)  # nobody will answer: write it only if taken already
            raise
        if job.error is not None:
            if isinstance(job.error, JournalError):
                raise job.error
            raise JournalError(f"cannot journal the batch: {job.error}") from job.error
        assert job.result is not None
        return job.result

    def making_progress(self, within: float) -> bool:
        """Is the writer alive and committing (or idle)? For the systemd watchdog."""
        return self._writer.making_progress(within)

    @property
    def max_batch_events(self) -> int:
        """The most events one batch should hold to be admitted beside other traffic:
        half the writer's queue, and never more than one commit takes (a pull splits
        larger pages into batches of this size)."""
        options = self._writer.options
        return max(1, min(options.max_events_per_commit, options.max_queued_events // 2))

    def commit_failure(self) -> tuple[float, str] | None:
        """While commits fail: since when (``time.time()``) and the last reason."""
        stats = self._writer.stats
        since = stats.failing_since
        if since is None:
            return None
        return since, stats.failing_reason or "unknown"

    def refusal(self) -> JournalBusy | None:
        """Why a batch would be refused now (a full queue, low disk, closing), or None:
        a request checks this before it reads and decodes a body for nothing."""
        return self._writer.refusal()

    def refuse_intake(self, reason: str | None) -> None:
        """Answer every new batch 503 with ``reason`` (None: accept again)."""
        self._writer.refusal_reason = reason

    def statistics(self) -> WriterStatistics:
        """The writer's counters (commits, events, duplicates, queue, disk state)."""
        return self._writer.stats


def _wake(journal: list[Journal], jobs: list[Job | Control]) -> None:
    for job in jobs:
        if isinstance(job.waiter, trio.Event):
            job.waiter.set()
    if journal:
        journal[0]._on_commit()


@asynccontextmanager
async def open_journal(
    path: str, options: WriterOptions, *, commit_budget: float = 5.0
) -> AsyncIterator[Journal]:
    """Open (creating and migrating) the journal at ``path`` and start its writer.

    On exit, everything already queued is committed before the writer stops.
    Raises :class:`JournalError` when the file cannot be used as a journal.
    """
    token = trio.lowlevel.current_trio_token()
    holder: list[Journal] = []  # filled once started; commits before that wake nobody

    def notify(jobs: list[Job | Control]) -> None:  # in the writer thread, once per commit
        # One wake-up of the event loop per group, not one per request.
        with contextlib.suppress(trio.RunFinishedError):  # loop gone: nobody waits
            token.run_sync_soon(_wake, holder, jobs)

    writer = JournalWriter(path, options, utc_now, notify)
    await trio.to_thread.run_sync(writer.start)
    try:
        holder.append(Journal(writer, commit_budget))
        yield holder[0]
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.close)


__all__ = ["AppendResult", "Batch", "Journal", "JournalBusy", "open_journal", "utc_now"]
