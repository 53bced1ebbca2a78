"""What the dedup indexer writes to disk: its index's WAL frames and nothing else."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from streamd.journal.dedup import (
    _SCHEMA,
    DEDUP_PAGE_SIZE,
    Generation,
    Indexer,
    Pending,
    insert_pairs,
)

_FRAME = DEDUP_PAGE_SIZE + 24  # a WAL frame: its header, then the page


def _write_syscalls() -> int:
    """Write system calls of this process so far (every thread's)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/self/io")


def _index_file(path: Path, keys: int, rng: random.Random) -> None:
    """A dedup index file holding ``keys`` random hashes, as the writer makes one."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS dedup", (str(path),))
        conn.execute(f"PRAGMA dedup.page_size = {DEDUP_PAGE_SIZE}")
        conn.execute("PRAGMA dedup.journal_mode = WAL")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO dedup.dedup_state VALUES (1, 'test', ?)", (keys,))
        pairs = [(rng.getrandbits(63), seq) for seq in range(1, keys + 1)]
        insert_pairs(conn, "dedup.dedup", pairs)
        conn.execute("PRAGMA dedup.wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def test_a_merged_insert_writes_only_wal_frames(tmp_path: Path) -> None:
    """The multi-row insert's statement journal stays in memory. In a temporary file (as
    SQLite does by default past 64 KiB) it wrote a copy of every index page the insert
    changed, doubling the indexer's write calls for each transaction."""
    rng = random.Random(17)
    path = tmp_path / "journal.dedup.db"
    _index_file(path, 40_000, rng)
    generation = Generation(covered_seq=42_000)
    for seq in range(40_001, 42_001):
        generation.owners[rng.getrandbits(63)] = seq
    # Another connection stays open, so the indexer's close does not checkpoint the WAL
    # away: its frames are what the indexer wrote.
    holder = sqlite3.connect(path)
    try:
        holder.execute("SELECT covered_seq FROM dedup_state").fetchone()  # opens the WAL
        wal = Path(f"{path}-wal")
        wal_before = wal.stat().st_size if wal.exists() else 0
        pending = Pending(limit=8)
        pending.push(generation)
        indexer = Indexer(str(path), pending, cache_mib=8)
        writes_before = _write_syscalls()
        indexer.start()
        indexer.stop()  # indexes what is pending, then stops
        writes = _write_syscalls() - writes_before
        frames = (wal.stat().st_size - wal_before) // _FRAME
        assert indexer.failures == 0
        covered = holder.execute("SELECT covered_seq FROM dedup_state").fetchone()[0]
        assert covered == 42_000
        stored = holder.execute("SELECT count(*) FROM dedup WHERE seq > 40000").fetchone()[0]
        assert stored == 2_000
        # 2,000 random keys into 40,000 change hundreds of 1 KiB pages: each one frame,
        # written as its header and its page. A few more calls for the WAL's own header.
        assert frames > 300
        assert writes <= 2 * frames + 16, (writes, frames)
    finally:
        holder.close()
