"""The journal on real SQLite files: dedup, atomicity, group commit, bounds, hostile files."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from streamd.core import EventRecord, decode_delivery, key_hash
from streamd.errors import CommitTimeout, JournalBusy, JournalClosed, JournalError
from streamd.journal import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Batch,
    Job,
    JournalWriter,
    WriterOptions,
    journal_stats,
    open_journal,
    utc_now,
)
from streamd.journal.dedup import MERGE_KEYS, Generation, Pending, dedup_path
from tests.conftest import fixture_bytes


def batch_of(name: str, source: str = "events") -> Batch:
    delivery = decode_delivery(fixture_bytes(name))
    return Batch(source, utc_now(), delivery.shape, delivery.events, delivery.message_id)


def record(key: str, *, hashed: int | None = None) -> EventRecord:
    return EventRecord(
        key=key,
        key_hash=key_hash(key) if hashed is None else hashed,
        stream="other",
        type=None,
        munchkin_id=None,
        activity_type_id=None,
        lead_id=None,
        occurred_at=None,
        raw=f'{{"id": "{key}"}}',
    )


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def assert_counts_agree(path: Path) -> None:
    """event_counts (kept by the writer) must equal what a scan of events says."""
    kept = rows(
        path,
        "SELECT minute, source, stream, type, munchkin_id, events, first_seq, last_seq, "
        "min_occurred_at, max_occurred_at FROM event_counts ORDER BY 1, 2, 3, 4, 5",
    )
    scanned = rows(
        path,
        "SELECT substr(received_at, 1, 16), source, stream, coalesce(type, ''), "
        "coalesce(munchkin_id, ''), count(*), min(seq), max(seq), min(occurred_at), "
        "max(occurred_at) FROM events GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
    )
    assert kept == scanned
    assert kept, "no events: the comparison would prove nothing"


def dedup_file(journal_path: Path) -> Path:
    return Path(dedup_path(str(journal_path)))


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


async def test_fixtures_are_journaled_once(journal_path: Path) -> None:
    names = ["legacy_push", "lads_batch", "lads_single", "audit_wrapper", "audit_old_wrapper",
             "notification"]  # fmt: skip
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        first = [await journal.append(batch_of(n)) for n in names]
        again = [await journal.append(batch_of(n)) for n in names]
    assert [r.accepted for r in first] == [4, 6, 1, 1, 1, 1]
    assert all(r.duplicates == 0 for r in first)
    assert [r.accepted for r in again] == [0] * 6
    assert [r.duplicates for r in again] == [4, 6, 1, 1, 1, 1]
    assert rows(journal_path, "SELECT count(*), count(DISTINCT event_key) FROM events") == [
        (14, 14)
    ]
    assert rows(dedup_file(journal_path), "SELECT count(*) FROM dedup") == [(14,)]
    # seq is the cursor space: dense and increasing in arrival order
    assert rows(journal_path, "SELECT min(seq), max(seq) FROM events") == [(1, 14)]
    stats = journal_stats(str(journal_path))
    assert stats["events"] == 14
    assert stats["duplicates"] == 14
    assert stats["deliveries"] == 12
    assert stats["by_stream"] == {"activity": 11, "audit": 2, "notification": 1}
    assert_counts_agree(journal_path)


async def test_columns_and_raw_are_stored(journal_path: Path) -> None:
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        await journal.append(batch_of("lads_single", source="io"))
    (row,) = rows(
        journal_path,
        "SELECT event_key, stream, type, munchkin_id, activity_type_id, lead_id, occurred_at, "
        "source, raw, received_at FROM events",
    )
    assert row[:8] == (
        "3a1f4e2c-0d41-4b4e-9f7e-5f2d1c000001",
        "activity",
        "com.adobe.platform.marketo.activity.standard.openemail",
        "123-ABC-456",
        10,
        1234,
        "2026-05-02T09:14:01.000Z",
        "io",
    )
    assert row[8] == fixture_bytes("lads_single").strip().decode()
    assert isinstance(row[9], str) and row[9].endswith("Z")


async def test_duplicates_inside_one_batch_count_once(journal_path: Path) -> None:
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        result = await journal.append(
            Batch("s", utc_now(), "cloudevent", [record("a"), record("b"), record("a")])
        )
    assert (result.accepted, result.duplicates) == (2, 1)
    assert rows(journal_path, "SELECT event_key FROM events ORDER BY seq") == [("a",), ("b",)]


async def test_a_colliding_key_twice_in_one_batch_is_journaled_once(journal_path: Path) -> None:
    same = 7  # k1 owns the hash; k2 collides with it, and comes twice
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        r1 = await journal.append(
            Batch("s", utc_now(), "x", [record(k, hashed=same) for k in ("k1", "k2", "k2", "k1")])
        )
        r2 = await journal.append(
            Batch("s", utc_now(), "x", [record(k, hashed=same) for k in ("k2", "k1")])
        )
    assert (r1.accepted, r1.duplicates, r2.accepted, r2.duplicates) == (2, 2, 0, 2)
    assert rows(journal_path, "SELECT event_key FROM events ORDER BY seq") == [("k1",), ("k2",)]


async def test_hash_collision_never_hides_a_distinct_event(journal_path: Path) -> None:
    # Force two distinct keys onto one 64-bit hash, as a real collision would.
    same = 42
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        r1 = await journal.append(Batch("s", utc_now(), "x", [record("k1", hashed=same)]))
        r2 = await journal.append(
            Batch("s", utc_now(), "x", [record("k2", hashed=same), record("k3", hashed=same)])
        )
        r3 = await journal.append(
            Batch("s", utc_now(), "x", [record(k, hashed=same) for k in ("k1", "k2", "k3")])
        )
    assert (r1.accepted, r2.accepted, r3.accepted) == (1, 2, 0)
    assert r3.duplicates == 3
    assert rows(journal_path, "SELECT event_key FROM events ORDER BY seq") == [
        ("k1",), ("k2",), ("k3",)
    ]  # fmt: skip
    assert rows(dedup_file(journal_path), "SELECT count(*) FROM dedup_overflow") == [(2,)]
    assert_counts_agree(journal_path)


async def test_concurrent_batches_share_commits(journal_path: Path) -> None:
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        results = []

        async def send(i: int) -> None:
            records = [record(f"{i}-{j}") for j in range(20)]
            results.append(await journal.append(Batch("s", utc_now(), "x", records)))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(send, i)
        stats = journal.statistics()
    assert sum(r.accepted for r in results) == 4000
    assert stats.batches == 200
    # Group commit: many requests per transaction (one fsync each).
    assert stats.commits < 200
    assert rows(journal_path, "SELECT count(*) FROM events") == [(4000,)]
    assert_counts_agree(journal_path)


async def test_a_failing_batch_takes_nothing_of_itself_or_its_group(journal_path: Path) -> None:
    # A real SQLite failure in the middle of one batch (a trigger raises on one event):
    # that batch's savepoint is rolled back, the other batches of the same commit stay,
    # and the per-minute counts count exactly the rows that stayed.
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        conn = sqlite3.connect(journal_path)
        conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.event_key LIKE 'poison%' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned event'); END"
        )
        conn.close()
        outcomes: dict[int, object] = {}

        async def send(i: int) -> None:
            keys = [f"{i}-{j}" for j in range(10)]
            if i % 3 == 0:
                keys[5] = f"poison-{i}"
            try:
                result = await journal.append(
                    Batch(f"src{i % 2}", utc_now(), "x", [record(k) for k in keys])
                )
                outcomes[i] = result.accepted
            except JournalError as exc:
                outcomes[i] = str(exc)

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(send, i)
        stats = journal.statistics()
    assert stats.commits < 30  # the failures happened inside shared commits
    for i, outcome in outcomes.items():
        if i % 3 == 0:
            assert isinstance(outcome, str) and "poisoned event" in outcome
        else:
            assert outcome == 10
    assert rows(journal_path, "SELECT count(*) FROM events") == [(200,)]
    assert rows(journal_path, "SELECT count(*) FROM events WHERE event_key LIKE '0-%'") == [(0,)]
    assert rows(journal_path, "SELECT count(*) FROM deliveries") == [(20,)]
    assert_counts_agree(journal_path)
    # The type index (flushed at close) holds each event that stayed, once: a failed
    # batch's entries went with its savepoint (its seqs were given to later batches).
    indexed = rows(
        dedup_file(journal_path),
        "SELECT j.value FROM type_index AS t, json_each(t.seqs) AS j ORDER BY j.value",
    )
    assert indexed == rows(journal_path, "SELECT seq FROM events ORDER BY seq")


async def test_reopen_continues_sequence_and_dedup(journal_path: Path) -> None:
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        await journal.append(batch_of("lads_batch"))
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        again = await journal.append(batch_of("lads_batch"))
        fresh = await journal.append(batch_of("legacy_push"))
    assert (again.accepted, again.duplicates, fresh.accepted) == (0, 6, 4)
    assert rows(journal_path, "SELECT min(seq), max(seq), count(*) FROM events") == [(1, 10, 10)]
    assert rows(journal_path, "SELECT name FROM migrations") == [(n,) for n, _ in MIGRATIONS]
    assert rows(journal_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(journal_path, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize(
    ("cache_mib", "journal_mib", "index_mib"), [(24, 12, 6), (64, 32, 16), (3, 1, 1), (1, 1, 1)]
)
async def test_journal_cache_mib_is_shared_by_the_writers_page_caches(
    journal_path: Path, cache_mib: int, journal_mib: int, index_mib: int
) -> None:
    """Half for the journal connection (its pages are appended, hardly read again), a
    quarter for each of the index file's two connections; at least 1 MiB each."""

    def sizes(conn: sqlite3.Connection) -> tuple[int, int]:
        main = conn.execute("PRAGMA main.cache_size").fetchone()[0]
        return main, conn.execute("PRAGMA dedup.cache_size").fetchone()[0]

    async with open_journal(str(journal_path), WriterOptions(cache_mib=cache_mib)) as journal:
        assert await journal.control(sizes) == (-1024 * journal_mib, -1024 * index_mib)


async def test_the_index_lookup_keeps_all_64_bits_of_a_hash(journal_path: Path) -> None:
    # The writer's lookup sends hashes to SQLite as JSON and reads owners back as JSON.
    extremes = [-(2**63), 2**63 - 1, 0, -1, 2**53 + 1]
    records = [record(f"x{i}", hashed=h) for i, h in enumerate(extremes)]
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        first = await journal.append(Batch("s", utc_now(), "x", records))
    assert rows(dedup_file(journal_path), "SELECT key_hash FROM dedup ORDER BY seq") == [
        (h,) for h in extremes
    ]
    # Reopened: nothing is pending in memory, so only the index can find them.
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        again = await journal.append(Batch("s", utc_now(), "x", records))
        # 2**53 (a neighbour a float would round onto) is a different hash: a new event.
        near = await journal.append(Batch("s", utc_now(), "x", [record("y", hashed=2**53)]))
    assert (first.accepted, again.duplicates, near.accepted) == (5, 5, 1)


async def test_commit_budget_answers_busy_and_nothing_is_lost(journal_path: Path) -> None:
    async with open_journal(str(journal_path), WriterOptions(), commit_budget=0.2) as journal:
        # Another process holds the write lock: the writer's BEGIN waits (busy_timeout).
        blocker = sqlite3.connect(journal_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(CommitTimeout, match="did not commit within 0.2 s"):
                await journal.append(batch_of("lads_single"))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # The sender retries; the event is journaled exactly once whatever happened before.
        retry = await journal.append(batch_of("lads_single"))
        assert retry.accepted + retry.duplicates == 1
    assert rows(journal_path, "SELECT count(*) FROM events") == [(1,)]


def test_queue_bound_low_disk_and_closing(journal_path: Path) -> None:
    done = threading.Event()
    writer = JournalWriter(str(journal_path), WriterOptions(max_queued_events=10), utc_now)
    writer.start()
    blocker = sqlite3.connect(journal_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # stall the writer so the queue fills
    try:
        jobs = [
            Job(Batch("s", utc_now(), "x", [record(f"q{i}-{j}") for j in range(6)]),
                on_done=lambda job: done.set())
            for i in range(3)
        ]  # fmt: skip
        writer.submit(jobs[0])
        # Events count as queued until their commit: 6 + 6 > 10.
        with pytest.raises(JournalBusy, match="queue is full") as info:
            writer.submit(jobs[1])
        assert info.value.retry_after == 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert done.wait(10)
    writer.stats.low_disk = True
    with pytest.raises(JournalBusy, match="free disk space"):
        writer.submit(jobs[2])
    writer.close()
    with pytest.raises(JournalClosed, match="shutting down"):
        writer.submit(jobs[2])


async def test_low_disk_floor_refuses_batches(journal_path: Path) -> None:
    options = WriterOptions(min_free_disk_bytes=2**62)
    async with open_journal(str(journal_path), options) as journal:
        with pytest.raises(JournalBusy, match="below the configured floor") as info:
            await journal.append(batch_of("lads_single"))
        assert info.value.retry_after == 60
    assert rows(journal_path, "SELECT count(*) FROM events") == [(0,)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database, just text" * 100, "file is not a database"),
        (
            b"SQLite format 3\x00" + b"\x00" * 50,
            "(not a usable streamd journal|file is not a database)",
        ),
    ],
)
async def test_hostile_journal_files(journal_path: Path, content: bytes, message: str) -> None:
    journal_path.write_bytes(content)
    with pytest.raises(JournalError, match=message):
        async with open_journal(str(journal_path), WriterOptions()):
            pass  # pragma: no cover


async def test_truncated_journal_is_refused_not_rebuilt(journal_path: Path) -> None:
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        await journal.append(batch_of("lads_batch"))
    data = journal_path.read_bytes()
    journal_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(JournalError):
        async with open_journal(str(journal_path), WriterOptions()) as journal:
            await journal.append(batch_of("lads_batch"))
            journal_stats(str(journal_path))
            rows(journal_path, "PRAGMA integrity_check")
            raise JournalError("truncated journal was opened")  # pragma: no cover


async def test_newer_schema_and_foreign_database_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(JournalError, match="schema version 99 is newer"):
        async with open_journal(str(newer), WriterOptions()):
            pass  # pragma: no cover
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    with pytest.raises(JournalError, match="has tables but is not a streamd journal"):
        async with open_journal(str(foreign), WriterOptions()):
            pass  # pragma: no cover


def test_stats_of_missing_or_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal here"):
        journal_stats(str(tmp_path / "absent.db"))
    (tmp_path / "junk.db").write_bytes(b"junk" * 1000)
    with pytest.raises(JournalError):
        journal_stats(str(tmp_path / "junk.db"))


async def fill(journal_path: Path) -> None:
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        for name in ("legacy_push", "lads_batch", "notification"):
            await journal.append(batch_of(name))


async def resend_all(journal_path: Path) -> tuple[int, int, int]:
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        results = [
            await journal.append(batch_of(n))
            for n in ("legacy_push", "lads_batch", "notification", "lads_single")
        ]
        reindexed = journal.statistics().reindexed
    return sum(r.accepted for r in results), sum(r.duplicates for r in results), reindexed


@pytest.mark.parametrize(
    "damage",
    ["deleted", "garbage", "lagging", "other-journal"],
)
async def test_dedup_index_is_rebuilt_from_the_journal(journal_path: Path, damage: str) -> None:
    await fill(journal_path)
    index = dedup_file(journal_path)
    if damage == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(str(index) + suffix).unlink(missing_ok=True)
    elif damage == "garbage":
        index.write_bytes(b"\x00garbage" * 500)
        Path(str(index) + "-wal").unlink(missing_ok=True)
    elif damage == "lagging":
        # A crash after the events' commit and before the index's: the index is behind.
        conn = sqlite3.connect(index)
        conn.execute("DELETE FROM dedup WHERE seq > 3")
        conn.execute("UPDATE dedup_state SET covered_seq = 3")
        conn.commit()
        conn.close()
    else:
        conn = sqlite3.connect(index)
        conn.execute("UPDATE dedup_state SET journal_id = 'someone-else'")
        conn.commit()
        conn.close()
    accepted, duplicates, reindexed = await resend_all(journal_path)
    # Every earlier event is still recognised: nothing is journaled twice.
    assert (accepted, duplicates) == (1, 11)
    assert reindexed == (8 if damage == "lagging" else 11)
    assert rows(journal_path, "SELECT count(*), count(DISTINCT event_key) FROM events") == [
        (12, 12)
    ]
    assert rows(index, "SELECT covered_seq FROM dedup_state") == [(12,)]


async def test_keys_not_yet_indexed_still_catch_duplicates(journal_path: Path) -> None:
    async with open_journal(str(journal_path), WriterOptions()) as journal:
        await journal.append(batch_of("lads_single"))
        with trio.fail_after(10):
            while rows(dedup_file(journal_path), "SELECT covered_seq FROM dedup_state") != [(1,)]:
                await trio.sleep(0.02)
        # Hold the index's write lock: the indexer cannot commit, keys stay pending.
        index = sqlite3.connect(dedup_file(journal_path), isolation_level=None, timeout=0.1)
        index.execute("BEGIN IMMEDIATE")
        try:
            first = await journal.append(batch_of("lads_batch"))
            again = await journal.append(batch_of("lads_batch"))
            mixed = await journal.append(batch_of("legacy_push"))
            assert (first.accepted, again.duplicates, mixed.accepted) == (6, 6, 4)
            assert index.execute("SELECT covered_seq FROM dedup_state").fetchone() == (1,)
        finally:
            index.execute("ROLLBACK")
            index.close()
        with trio.fail_after(10):
            while rows(dedup_file(journal_path), "SELECT covered_seq FROM dedup_state") != [(11,)]:
                await trio.sleep(0.02)
        assert (await journal.append(batch_of("lads_batch"))).duplicates == 6
    assert rows(dedup_file(journal_path), "SELECT count(*) FROM dedup") == [(11,)]


def _covered(journal_path: Path) -> int:
    """The index file's covered_seq: every event up to it has its key in the file."""
    ((covered,),) = rows(dedup_file(journal_path), "SELECT covered_seq FROM dedup_state")
    assert isinstance(covered, int)
    return covered


def _keys(prefix: str, n: int) -> Batch:
    return Batch("s", utc_now(), "x", [record(f"{prefix}-{i}") for i in range(n)])


async def test_committed_keys_reach_the_index_in_generations_of_index_keys(
    journal_path: Path,
) -> None:
    # Each random key the indexer inserts rewrites a page of the index file: the writer
    # collects index_keys keys (or index_interval seconds' worth) before handing them over.
    options = WriterOptions(index_keys=40, index_interval=3600)
    batches = [_keys(f"b{b}", 10) for b in range(4)]
    async with open_journal(str(journal_path), options) as journal:
        for batch in batches[:3]:
            assert (await journal.append(batch)).accepted == 10
        await trio.sleep(0.3)  # an indexer given each group would have written it by now
        assert _covered(journal_path) == 0
        # Not in the index file, still caught: every lookup consults the collected keys.
        assert (await journal.append(batches[1])).duplicates == 10
        assert (await journal.append(batches[3])).accepted == 10  # 40 keys: handed over
        with trio.fail_after(10):
            while _covered(journal_path) != 40:
                await trio.sleep(0.02)
        assert (await journal.append(batches[0])).duplicates == 10  # from the file now
        assert (await journal.append(_keys("last", 1))).accepted == 1
        assert _covered(journal_path) == 40  # one key collected, not handed over
    # Stopping hands over what was collected: the next start has nothing to index again.
    assert _covered(journal_path) == 41
    async with open_journal(str(journal_path), options) as journal:
        assert journal.statistics().reindexed == 0
        assert (await journal.append(_keys("last", 1))).duplicates == 1


async def test_an_idle_writer_hands_its_collected_keys_over(journal_path: Path) -> None:
    # Traffic stops short of index_keys: the index file catches up all the same, at the
    # writer's idle wake-up once the generation is index_interval seconds old.
    options = WriterOptions(index_keys=10**6, index_interval=0.5)
    async with open_journal(str(journal_path), options) as journal:
        assert (await journal.append(_keys("idle", 5))).accepted == 5
        assert _covered(journal_path) == 0
        with trio.fail_after(10):
            while _covered(journal_path) != 5:
                await trio.sleep(0.05)


async def test_collected_keys_are_indexed_again_after_a_crash(journal_path: Path) -> None:
    # A crash (here: the index file put back as it was before the writer's stop handed
    # the collected keys over) loses the collected keys, never a duplicate decision: the
    # next start indexes every event past covered_seq before it accepts a batch.
    options = WriterOptions(index_keys=10**6, index_interval=3600)
    index = dedup_file(journal_path)
    async with open_journal(str(journal_path), options) as journal:
        assert (await journal.append(_keys("early", 3))).accepted == 3
    # Stopped: the index file as it is, no writer or checkpoint running meanwhile.
    snapshot = {
        suffix: Path(f"{index}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{index}{suffix}").exists()
    }
    async with open_journal(str(journal_path), options) as journal:
        assert (await journal.append(_keys("crash", 7))).accepted == 7
        assert _covered(journal_path) == 3
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    for suffix, data in snapshot.items():
        Path(f"{index}{suffix}").write_bytes(data)
    assert _covered(journal_path) == 3
    async with open_journal(str(journal_path), options) as journal:
        assert journal.statistics().reindexed == 7
        again = await journal.append(_keys("crash", 7))
        assert (again.accepted, again.duplicates) == (0, 7)


async def test_low_disk_lifts_by_itself_when_space_returns(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_journal(str(journal_path), WriterOptions(min_free_disk_bytes=2**62)) as journal:
        with pytest.raises(JournalBusy, match="below the configured floor"):
            await journal.append(batch_of("lads_single"))
        # The operator frees space (here: the file system reports more than the floor);
        # no batch needs to arrive first.
        real = os.statvfs

        def roomy(path: str) -> os.statvfs_result:
            st = real(path)
            return os.statvfs_result((*st[:4], 2**63 // st.f_frsize, *st[5:]))

        monkeypatch.setattr(os, "statvfs", roomy)
        with trio.fail_after(5):
            while journal.statistics().low_disk:
                await trio.sleep(0.05)
        assert (await journal.append(batch_of("lads_single"))).accepted == 1


def _generation(first: int, keys: int) -> Generation:
    owners = {h: h for h in range(first, first + keys)}
    return Generation(owners=owners, covered_seq=first + keys - 1)


def test_the_indexer_takes_every_pending_generation_in_one_go() -> None:
    # One transaction for every generation pending, oldest first; popped once indexed.
    pending = Pending(limit=8)
    generations = [_generation(1 + 20 * i, 20) for i in range(3)]
    for generation in generations:
        pending.push(generation)
    stop = threading.Event()
    assert pending.oldest(stop) == generations  # enough pending: no wait
    assert pending.snapshot() == generations  # still visible to lookups
    pending.pop_oldest(len(generations))
    assert pending.snapshot() == []
    stop.set()
    assert pending.oldest(stop) == []


def test_the_indexer_writes_at_most_merge_keys_at_once() -> None:
    pending = Pending(limit=8)
    big = [_generation(1, MERGE_KEYS - 10), _generation(MERGE_KEYS, 20), _generation(10**9, 5)]
    for generation in big:
        pending.push(generation)
    stop = threading.Event()
    stop.set()  # stopping: what is there is written at once, however few
    assert pending.oldest(stop) == big[:1]
    pending.pop_oldest()
    assert pending.oldest(stop) == big[1:]


def test_a_stopping_writer_hands_over_without_waiting_for_a_full_backlog() -> None:
    # The writer's last hand-over at stop: were the indexer behind (its file unwritable)
    # with the backlog full, waiting would hold the stop until the file could be written.
    pending = Pending(limit=1)
    pending.push(_generation(1, 5))
    pending.release()  # the writer's close()
    pushed = threading.Thread(target=pending.push, args=(_generation(6, 5),))
    pushed.start()
    pushed.join(5)
    assert not pushed.is_alive()
    assert [g.covered_seq for g in pending.snapshot()] == [5, 10]
