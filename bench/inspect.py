"""How fast are the inspection commands on a large journal, and what do they cost ingest?

    python -m bench.inspect --events 10000000            # build (cached) and time
    python -m bench.inspect --events 2000000 --repeat 5
    python -m bench.inspect --events 2000000 --impact    # also: ingest alone vs during export

The journal is built once per ``--events`` under ``bench/.cache/inspect-N/journal.db``
(reused until ``--rebuild``) by direct SQLite inserts into streamd's own schema
(migrations applied by ``streamd.journal.schema.migrate``): bodies from
``streamd/emit/generate.py`` (legacy and I/O alternating, 500 events per delivery), decoded
with streamd's ``decode_delivery``, so every column is what ingest would have
written. Deliveries are received evenly over 8 days (the dedup horizon), so a
24-hour window holds an eighth of the journal. Indexes are created after the rows
(faster to build; the same indexes). No dedup index file is built (``show`` by key
would scan; it is not timed).

Each timed case runs ``streamd journal ...`` in a fresh process (``python -m
streamd``), stdout to /dev/null, ``--repeat`` times; the JSON result keeps every
wall time, the minimum and the median. ``--impact`` runs the writer-only
benchmark (``bench.journal_writer``) alone and then while ``journal export`` of
the big journal runs in a loop, alternating, and reports both rates.
Prints one JSON object; ``--out FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Final

import orjson

from bench._report import print_summary
from streamd.core import decode_delivery
from streamd.emit.generate import iter_batches
from streamd.journal.schema import MIGRATIONS, connect, migrate

_CACHE: Final = Path(__file__).resolve().parent / ".cache"
_BATCH: Final = 500
_START: Final = 1_777_712_400  # 2026-05-02T09:00:00Z, as streamd/emit/generate.py
_SPAN: Final = 8 * 86_400


def _stamp(epoch: float) -> str:
    whole = int(epoch)
    ms = int((epoch - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def build(path: Path, events: int) -> dict[str, Any]:
    """Write ``events`` generated events into a new journal at ``path``."""
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    conn = connect(str(tmp), synchronous="normal", cache_mib=256)
    migrate(conn, str(tmp), _stamp(_START))
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
        "AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.execute("PRAGMA journal_mode = OFF")  # a throwaway build: no rollback needed
    conn.execute("PRAGMA synchronous = OFF")
    deliveries = max(1, events // _BATCH)
    legacy = iter_batches("legacy", _BATCH, seed=5, worker=1)
    io = iter_batches("io", _BATCH, seed=5, worker=2)
    bodies = (b for pair in zip(legacy, io, strict=False) for b in pair)
    seq = 0
    conn.execute("BEGIN")
    for number, body in enumerate(islice(bodies, deliveries), start=1):
        d = decode_delivery(body)
        received = _stamp(_START + _SPAN * number / deliveries)
        source = "marketo-push" if d.shape == "legacy" else "adobe-io"
        conn.execute(
            "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, NULL, NULL, ?, ?, 0)",
            (number, received, source, d.shape, d.message_id, len(d.events), len(d.events)),
        )
        rows = []
        for r in d.events:
            seq += 1
            rows.append(
                (seq, r.key, r.stream, r.type, r.munchkin_id, r.activity_type_id, r.lead_id,
                 r.occurred_at, received, source, number, r.raw)
            )  # fmt: skip
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if number % 200 == 0:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    inserted = time.perf_counter()
    for _, sql in indexes:
        conn.execute(sql)
    fill_event_counts(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, path)
    done = time.perf_counter()
    return {
        "events": seq,
        "deliveries": deliveries,
        "insert_seconds": round(inserted - started, 1),
        "index_seconds": round(done - inserted, 1),
        "bytes": path.stat().st_size,
    }


# What the journal writer keeps per commit, computed once for the whole table.
_FILL_COUNTS = """
INSERT INTO event_counts
SELECT substr(received_at, 1, 16), source, stream, coalesce(type, ''),
       coalesce(munchkin_id, ''), count(*), min(seq), max(seq), min(occurred_at),
       max(occurred_at)
FROM events GROUP BY 1, 2, 3, 4, 5
"""


def fill_event_counts(conn: sqlite3.Connection) -> None:
    """Fill ``event_counts`` as the writer would have (the build bypasses the writer)."""
    conn.execute("DELETE FROM event_counts")
    conn.execute(_FILL_COUNTS)


def ensure_event_counts(path: Path) -> None:
    """A cached journal built before ``event_counts`` existed gets the table and its
    counts now (once; the cache is a benchmark fixture, not a journal in service)."""
    ddl = next(stmt for stmt in MIGRATIONS[0][1] if "CREATE TABLE event_counts" in stmt)
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(ddl.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
            if conn.execute("SELECT 1 FROM event_counts LIMIT 1").fetchone() is None:
                fill_event_counts(conn)
    finally:
        conn.close()


def _facts(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        newest, last_received = conn.execute(
            "SELECT seq, received_at FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        # A lead id and a type from the middle of the journal (what an operator would ask).
        lead, etype = conn.execute(
            "SELECT lead_id, type FROM events WHERE seq = ?", (newest // 2,)
        ).fetchone()
        lead_events = conn.execute(
            "SELECT count(*) FROM events WHERE lead_id = ?", (lead,)
        ).fetchone()[0]
    finally:
        conn.close()
    return {
        "newest": newest,
        "last_received": last_received,
        "lead": lead,
        "lead_events": lead_events,
        "type": etype,
    }


def _time(argv: list[str], repeat: int) -> dict[str, Any]:
    walls = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "streamd", *argv],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600, check=False,
        )  # fmt: skip
        walls.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"{argv}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return {
        "argv": argv,
        "seconds": [round(w, 3) for w in walls],
        "min": round(min(walls), 3),
        "median": round(statistics.median(walls), 3),
    }


def _startup(repeat: int) -> dict[str, Any]:
    """The cost of starting the interpreter and importing streamd (included in every case)."""
    return _time(["--version"], repeat)


def cases(path: Path, facts: dict[str, Any]) -> dict[str, list[str]]:
    j = ["--journal", str(path)]
    lead, etype = str(facts["lead"]), facts["type"]
    last = facts["last_received"]
    day_before = _stamp(datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() - 86_400)
    return {
        "grep-lead-count": ["journal", "grep", *j, "--lead", lead, "--count"],
        "grep-lead-all": ["journal", "grep", *j, "--lead", lead, "--format", "jsonl"],
        "grep-lead-cdv": ["journal", "grep", *j, "--lead", lead, "--activity-type", "13"],
        "grep-type-count": ["journal", "grep", *j, "--type", etype, "--count"],
        "grep-type-first100": ["journal", "grep", *j, "--type", etype, "--limit", "100"],
        "grep-type-glob-first100": ["journal", "grep", *j, "--type", "*.changedatavalue",
                                    "--limit", "100"],
        "stats-24h": ["journal", "stats", *j, "--since", day_before, "--until", last, "--json"],
        "tail-10": ["journal", "tail", *j, "-n", "10", "--format", "jsonl"],
        "export-1m-jsonl": ["journal", "export", *j, "--limit", "1000000"],
        "export-1m-csv": ["journal", "export", *j, "--limit", "1000000", "--format", "csv"],
    }  # fmt: skip


def impact(path: Path, rounds: int, max_rate: int | None = None) -> dict[str, Any]:
    """journal_writer events/s alone vs while an export of ``path`` loops (alternating)."""
    writer = [sys.executable, "-m", "bench.journal_writer", "--events", "400000"]
    # The writer journals into its own file, so the export cannot see a daemon holding
    # the exported one: --impact-max-rate gives it the pace it would then take.
    pace = "" if max_rate is None else f" --max-rate {max_rate}"
    results: dict[str, list[float]] = {"alone": [], "during-export": []}
    for _ in range(rounds):
        for variant in ("alone", "during-export"):
            exporter = None
            if variant == "during-export":
                exporter = subprocess.Popen(
                    ["sh", "-c", f"while :; do {sys.executable} -m streamd journal export "
                     f"--journal {path}{pace} >/dev/null; done"],
                    start_new_session=True,
                )  # fmt: skip
                time.sleep(1)
            try:
                out = subprocess.run(writer, capture_output=True, timeout=600, check=True)
            finally:
                if exporter is not None:
                    os.killpg(exporter.pid, 15)
                    exporter.wait(10)
            results[variant].append(orjson.loads(out.stdout.splitlines()[-1])["events_per_s"])
    alone = statistics.median(results["alone"])
    during = statistics.median(results["during-export"])
    return {
        "writer_events_per_s": results,
        "median_alone": alone,
        "median_during_export": during,
        "change": round(during / alone - 1, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inspect", description=__doc__)
    ap.add_argument("--events", type=int, default=10_000_000, help="journal size")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case")
    ap.add_argument("--rebuild", action="store_true", help="build the journal again")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--impact", action="store_true", help="measure ingest alone vs during export")
    ap.add_argument("--impact-rounds", type=int, default=2)
    ap.add_argument(
        "--impact-max-rate",
        type=int,
        help="export at this pace during --impact (what it does while a daemon ingests)",
    )
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    path = _CACHE / f"inspect-{args.events}" / "journal.db"
    result: dict[str, Any] = {"question": "inspection commands on a large journal"}
    if args.rebuild or not path.exists():
        result["build"] = build(path, args.events)
    ensure_event_counts(path)
    result["journal"] = {"path": str(path), "bytes": path.stat().st_size, **_facts(path)}
    result["startup"] = _startup(args.repeat)
    only = {name for name in args.only.split(",") if name}
    timings = {}
    for name, command in cases(path, result["journal"]).items():
        if not only or name in only:
            timings[name] = _time(command, args.repeat)
    result["cases"] = timings
    if "export-1m-jsonl" in timings:
        best = timings["export-1m-jsonl"]["min"] - result["startup"]["min"]
        result["export_events_per_s"] = round(1_000_000 / best)
    if args.impact:
        result["impact"] = impact(path, args.impact_rounds, args.impact_max_rate)
    print_summary(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
