"""What a batch's submitter is told, on real SQLite files: never 503 for a batch that
committed, never a batch past the queue bound, and commits that fail are said so.

The writer is held where a test needs it by a control op that waits inside the group
transaction (:class:`Gate`); the commit budget runs out on trio's mock clock, so no
test waits for real time to pass except where SQLite's own lock wait is the subject.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from streamd.core import decode_delivery
from streamd.errors import CommitTimeout, JournalBusy, JournalError
from streamd.journal import AppendResult, Batch, Job, JournalWriter, WriterOptions, open_journal
from streamd.journal.appender import Journal, utc_now
from streamd.journal.dedup import dedup_path
from tests.conftest import fixture_bytes
from tests.journals import submit_and_wait
from tests.unit.test_journal import record, rows


def lads_batch() -> Batch:
    delivery = decode_delivery(fixture_bytes("lads_batch"))
    return Batch("events", utc_now(), delivery.shape, delivery.events, delivery.message_id)


class Gate:
    """A control op that holds the writer inside its group transaction until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def op(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        if not self.opened.wait(10):
            raise RuntimeError("the test never opened the gate")

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, 10), "the writer never came"


async def _send(journal: Journal, batch: Batch, outcome: dict[str, object]) -> None:
    try:
        outcome["result"] = await journal.append(batch)
    except JournalError as exc:
        outcome["error"] = exc


async def test_a_batch_the_writer_took_is_waited_for_past_the_budget(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "journal.db"
    outcome: dict[str, object] = {}
    async with open_journal(str(path), WriterOptions(), commit_budget=1.0) as journal:
        first, second = Gate(), Gate()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.control, first.op)
            await first.wait_entered()  # group 1 holds the writer
            nursery.start_soon(_send, journal, lads_batch(), outcome)
            await trio.testing.wait_all_tasks_blocked()  # the batch is queued...
            nursery.start_soon(journal.control, second.op)  # ... and this op behind it
            await trio.testing.wait_all_tasks_blocked()
            first.opened.set()
            # Group 2: the batch is taken and written; the op holds the COMMIT.
            await second.wait_entered()
            mock_clock.jump(5.0)  # the budget runs out while the batch is being committed
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == {}, "answered before the commit that holds the batch ended"
            second.opened.set()
    result = outcome.get("result")
    assert isinstance(result, AppendResult), outcome  # 200, never 503 for what committed
    assert (result.accepted, result.duplicates) == (6, 0)
    assert rows(path, "SELECT count(*) FROM events") == [(6,)]
    assert rows(path, "SELECT count(*), sum(accepted) FROM deliveries") == [(1, 6)]


async def test_a_batch_still_queued_at_the_budget_is_abandoned_and_never_written(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "journal.db"
    outcome: dict[str, object] = {}
    async with open_journal(str(path), WriterOptions(), commit_budget=1.0) as journal:
        gate = Gate()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.control, gate.op)
            await gate.wait_entered()
            nursery.start_soon(_send, journal, lads_batch(), outcome)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(5.0)  # still queued behind the held group
            await trio.testing.wait_all_tasks_blocked()
            error = outcome.get("error")
            assert isinstance(error, CommitTimeout), outcome
            assert "did not commit within 1 s" in str(error)
            gate.opened.set()
        # The next group finds it abandoned: nothing of it is written.
        await journal.control(lambda conn: None)
        assert journal.statistics().queued_events == 0
    assert rows(path, "SELECT count(*) FROM events") == [(0,)]
    assert rows(path, "SELECT count(*) FROM deliveries") == [(0,)]


def test_abandon_and_take_exclude_each_other(tmp_path: Path) -> None:
    writer = JournalWriter(str(tmp_path / "journal.db"), WriterOptions(), utc_now)
    taken = Job(Batch("s", utc_now(), "x", [record("a")]))
    taken.taken = True
    assert writer.abandon(taken) is False and taken.abandoned is False
    queued = Job(Batch("s", utc_now(), "x", [record("b")]))
    assert writer.abandon(queued) is True and queued.abandoned is True


def test_a_batch_larger_than_the_queue_is_refused_even_into_an_empty_queue(
    tmp_path: Path,
) -> None:
    writer = JournalWriter(
        str(tmp_path / "journal.db"), WriterOptions(max_queued_events=10), utc_now
    )
    writer.start()
    try:
        oversized = Job(Batch("s", utc_now(), "x", [record(f"o{i}") for i in range(11)]))
        with pytest.raises(JournalBusy, match=r"batch of 11 events is more than") as info:
            writer.submit(oversized)
        assert (info.value.reason, info.value.retry_after) == ("queue_full", 2)
        assert writer.stats.queued_events == 0
        done = threading.Event()
        fits = Job(
            Batch("s", utc_now(), "x", [record(f"f{i}") for i in range(10)]),
            on_done=lambda job: done.set(),
        )
        writer.submit(fits)  # exactly the bound: admitted
        assert done.wait(10)
        assert fits.result is not None and fits.result.accepted == 10
    finally:
        writer.close()


async def test_failing_commits_are_reported_and_a_probe_ends_them_without_a_batch(
    tmp_path: Path,
) -> None:
    # Another process holds the journal's write lock: the writer's claim waits SQLite's
    # busy_timeout (5 s), then the whole group fails at once (not batch after batch).
    path = tmp_path / "journal.db"
    async with open_journal(str(path), WriterOptions(), commit_budget=30.0) as journal:
        await journal.append(lads_batch())
        assert journal.commit_failure() is None
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with trio.fail_after(20), pytest.raises(JournalError) as info:
                await journal.append(Batch("s", utc_now(), "x", [record("locked")]))
            assert "the journal commit failed: database is locked (SQLITE_BUSY)" in str(info.value)
            failure = journal.commit_failure()
            assert failure is not None and failure[1] == "database is locked (SQLITE_BUSY)"
            stats = journal.statistics()
            assert stats.commit_failures >= 1
            # A failed commit is no progress (the watchdog): the last success is > 5 s old.
            assert not journal.making_progress(within=2.0)
            batches = stats.batches
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # No batch arrives: the writer's own probe finds the lock gone.
        with trio.fail_after(20):
            while journal.commit_failure() is not None:
                await trio.sleep(0.05)
        assert journal.statistics().batches == batches
        assert journal.making_progress(within=2.0)
        retry = await journal.append(Batch("s", utc_now(), "x", [record("locked")]))
        assert retry.accepted == 1
    # The probe wrote and took back its row: the journal holds what it held.
    assert rows(path, "SELECT key FROM meta ORDER BY key") == [("counts_seq",), ("journal_id",)]
    assert rows(path, "SELECT count(*) FROM events") == [(7,)]


async def test_a_batch_is_answered_when_the_dedup_index_falls_behind(tmp_path: Path) -> None:
    # The indexer cannot write its file (another connection holds its write lock, as a
    # full disk would refuse it): committed keys pile up in memory, 3 generations handed
    # over at most, and then the writer waits. It must wait *after* answering the group
    # it committed. (One key a generation here: each group is handed over at once.)
    path = tmp_path / "journal.db"
    options = WriterOptions(index_keys=1)
    async with open_journal(str(path), options, commit_budget=0.5) as journal:
        blocker = sqlite3.connect(dedup_path(str(path)), isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            for i in range(4):  # the 4th group finds 3 pending: its hand-over waits
                with trio.fail_after(20):
                    result = await journal.append(Batch("s", utc_now(), "x", [record(f"i{i}")]))
                assert result.accepted == 1
            # The writer now waits for the indexer: a new batch stays queued, and goes
            # at its budget (503, never written).
            with pytest.raises(CommitTimeout):
                await journal.append(Batch("s", utc_now(), "x", [record("late")]))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with trio.fail_after(30):
            again = await journal.append(Batch("s", utc_now(), "x", [record("late")]))
        assert again.accepted == 1
    assert rows(path, "SELECT count(*) FROM events") == [(5,)]


def test_a_stop_gives_up_on_an_index_file_another_process_keeps_locked(
    tmp_path: Path,
) -> None:
    # An operator's sqlite3 shell in a write transaction on the index file: each of the
    # indexer's attempts waits busy_timeout (5 s) and fails. Stopping, it tried 50 times
    # (minutes); now it tries for index_stop_grace, and the next start indexes the rest.
    path = tmp_path / "journal.db"
    writer = JournalWriter(str(path), WriterOptions(index_stop_grace=0.5), lambda: "")
    writer.start()
    assert submit_and_wait(writer, Batch("s", utc_now(), "x", [record("a"), record("b")])) == 2
    shell = sqlite3.connect(dedup_path(str(path)), isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")
    try:
        closer = threading.Thread(target=writer.close, daemon=True)
        closer.start()
        closer.join(40)
        assert not closer.is_alive(), "the stop waited for the index file's lock"
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    assert_reindexed_at_start(path, 2, "b")


def test_a_stop_does_not_wait_for_an_index_file_that_refuses_every_write(
    tmp_path: Path,
) -> None:
    # The index file refuses every insert (as a disk full for good would) and the writer
    # waits with the backlog full, after answering. The indexer is only told to stop once
    # the writer has: a stop that waited for the writer's hand-over waited for good.
    path = tmp_path / "journal.db"
    index = dedup_path(str(path))
    writer = JournalWriter(str(path), WriterOptions(index_keys=1), lambda: "")
    writer.start()
    refuse = sqlite3.connect(index, isolation_level=None)
    refuse.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON dedup BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    refuse.close()
    # One key a generation: the 4th group's hand-over finds 3 pending, and waits.
    for i in range(4):
        assert submit_and_wait(writer, Batch("s", utc_now(), "x", [record(f"i{i}")])) == 1
    closer = threading.Thread(target=writer.close, daemon=True)
    closer.start()
    closer.join(60)
    assert not closer.is_alive(), "the stop waited for the index file"
    assert rows(path, "SELECT count(*) FROM events") == [(4,)]
    # The file writable again: the next start indexes what it never got.
    conn = sqlite3.connect(index)
    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    assert_reindexed_at_start(path, 4, "i0")


def assert_reindexed_at_start(path: Path, events: int, key: str) -> None:
    """The next start indexes again the ``events`` the index file never got, and a
    delivery of ``key`` again is a duplicate."""
    again = JournalWriter(str(path), WriterOptions(), lambda: "")
    again.start()
    try:
        assert again.stats.reindexed == events
        assert submit_and_wait(again, Batch("s", utc_now(), "x", [record(key)])) == 0
    finally:
        again.close()
