"""The physical limit: how fast can plain SQLite append these events, durably?

    python -m bench.sqlite_append --synchronous full --per-tx 500 --events 500000

Appends the benchmark's events, one row each (a sequence INTEGER PRIMARY KEY, the event
id, munchkin id, type, receive time, batch number and the raw event JSON text), to a fresh
WAL-mode database with ``synchronous`` FULL or NORMAL, ``--per-tx`` events per
transaction, and no index. ``--dedup`` adds what a dedup check needs, to price it alone:
``text``, a UNIQUE index on the 36-character id; ``hash``, a rowid table keyed by a
64-bit hash of the id (8-byte keys instead of 36-byte ones), written in the same
transaction.
Rows are decoded and built before the clock starts: only SQLite is timed. A receiver doing
the same appends through HTTP cannot beat this. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from streamd.emit.generate import Shape, iter_batches

_CACHE: Final = Path(__file__).resolve().parent / ".cache"
_SCHEMA: Final = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    munchkin_id TEXT,
    event_type TEXT,
    received_ns INTEGER NOT NULL,
    batch_seq INTEGER NOT NULL,
    body TEXT NOT NULL
)
"""
_INSERT: Final = (
    "INSERT INTO events (event_id, munchkin_id, event_type, received_ns, batch_seq, body)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
Row = tuple[str, str | None, str | None, int, int, str]
Dedup = Literal["none", "text", "hash"]


def key_hash(event_id: str) -> int:
    """A signed 64-bit hash of an event id (fits an SQLite INTEGER PRIMARY KEY)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def build_rows(shape: Shape, events: int, per_tx: int, seed: int) -> list[list[Row]]:
    """Decode generated bodies into rows, grouped ``per_tx`` to a transaction.

    ``received_ns`` and ``batch_seq`` are placeholders; the timed loop fills them in.
    """
    txs: list[list[Row]] = []
    bodies = iter_batches(shape, per_tx, seed=seed, worker=0)
    while len(txs) * per_tx < events:
        doc = orjson.loads(next(bodies))
        rows: list[Row] = []
        if shape == "legacy":
            munchkin = doc["munchkinId"]
            for a in doc["activities"]:
                text = orjson.dumps(a).decode()
                rows.append((a["marketoGUID"], munchkin, a["activityType"], 0, 0, text))
        else:
            for e in doc:
                text = orjson.dumps(e).decode()
                rows.append((e["id"], e["data"]["munchkinId"], e["type"], 0, 0, text))
        txs.append(rows)
    return txs


def append(
    path: Path, txs: list[list[Row]], synchronous: str, dedup: Dedup, duration: float | None
) -> dict[str, Any]:
    """Append ``txs`` to a fresh database at ``path``; return the timing figures."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute(_SCHEMA)
        if dedup == "text":
            db.execute("CREATE UNIQUE INDEX events_event_id ON events (event_id)")
        elif dedup == "hash":
            db.execute("CREATE TABLE dedup (key_hash INTEGER PRIMARY KEY, seq INTEGER NOT NULL)")
        # Hashes are computed before the clock starts, like the rest of the rows.
        hashes = [[key_hash(r[0]) for r in rows] for rows in txs] if dedup == "hash" else []
        events = done = seq = 0
        start = time.perf_counter()
        for n, rows in enumerate(txs):
            now = time.time_ns()
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_INSERT, [(r[0], r[1], r[2], now, n, r[5]) for r in rows])
            if dedup == "hash":
                pairs = zip(hashes[n], range(seq + 1, seq + 1 + len(rows)), strict=True)
                db.executemany("INSERT INTO dedup (key_hash, seq) VALUES (?, ?)", pairs)
            seq += len(rows)
            db.execute("COMMIT")
            events += len(rows)
            done += 1
            if duration is not None and time.perf_counter() - start >= duration:
                break
        elapsed = time.perf_counter() - start
        pragmas = {
            p: db.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "synchronous", "page_size", "wal_autocheckpoint")
        }
    finally:
        db.close()
    return {
        "events": events,
        "transactions": done,
        "duration_s": round(elapsed, 3),
        "events_per_s": round(events / elapsed, 1),
        "tx_per_s": round(done / elapsed, 1),
        "pragmas": pragmas,
        "db_bytes": sum(f.stat().st_size for f in path.parent.glob(path.name + "*")),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sqlite_append", description=__doc__)
    ap.add_argument("--synchronous", choices=("full", "normal"), default="full")
    ap.add_argument("--per-tx", type=int, default=500, help="events per transaction")
    ap.add_argument("--events", type=int, default=500_000, help="events to append at most")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--shape", choices=("legacy", "io"), default="legacy")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--dedup",
        choices=("none", "text", "hash"),
        default="none",
        help="text: UNIQUE index on the id; hash: rowid table of 64-bit id hashes",
    )
    ap.add_argument("--dir", type=Path, help="where to create the database (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.per_tx < 1 or a.events < 1:
        ap.error("--per-tx and --events must be at least 1")
    g0 = time.perf_counter()
    txs = build_rows(a.shape, a.events, a.per_tx, a.seed)
    pregen_s = time.perf_counter() - g0
    if a.dir is None:
        _CACHE.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sqlite-append-", dir=a.dir or _CACHE))
    try:
        figures = append(workdir / "events.db", txs, a.synchronous, a.dedup, a.duration)
    finally:
        shutil.rmtree(workdir)
    result = {
        "synchronous": a.synchronous,
        "per_tx": a.per_tx,
        "shape": a.shape,
        "dedup": a.dedup,
        "sqlite_version": sqlite3.sqlite_version,
        **figures,
        "pregen_s": round(pregen_s, 3),
    }
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
