"""How fast is the journal writer by itself, with no HTTP, as the journal grows?

    python -m bench.journal_writer --synchronous full --batch 500 --inflight 16 \\
        --prefill 2000000 --events 400000

Decodes generated bodies with streamd's own ``decode_delivery`` before the clock
starts, then submits them to a real ``JournalWriter`` (group commit, dedup, indexer
and checkpoint threads) keeping ``--inflight`` batches outstanding, as concurrent
requests would. ``--prefill`` events go in first, untimed in the result but reported.
Timed: ``--events`` more. Prints one JSON object: events/s, commits, batches per
commit, and the journal's size. This is the question behind the dedup-index design
in ARCHITECTURE.md; each run is its own process on a fresh journal in a temporary
directory under ``bench/.cache``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Final

import orjson

from streamd.core import Delivery, decode_delivery
from streamd.emit.generate import iter_batches
from streamd.journal import Batch, Job, JournalWriter, WriterOptions, utc_now

_CACHE: Final = Path(__file__).resolve().parent / ".cache"


def _deliveries(shape: str, batch: int, events: int, seed: int, worker: int) -> list[Delivery]:
    count = max(1, events // batch)
    bodies = iter_batches(shape, batch, seed=seed, worker=worker)  # type: ignore[arg-type]
    return [decode_delivery(body) for body in islice(bodies, count)]


def _drive(writer: JournalWriter, deliveries: list[Delivery], inflight: int) -> float:
    """Submit every delivery with at most ``inflight`` outstanding; return seconds."""
    slots = threading.Semaphore(inflight)
    errors: list[BaseException] = []

    def done(job: Job) -> None:
        if job.error is not None:
            errors.append(job.error)
        slots.release()

    started = time.perf_counter()
    for delivery in deliveries:
        slots.acquire()
        batch = Batch("bench", utc_now(), delivery.shape, delivery.events)
        writer.submit(Job(batch=batch, on_done=done))
    for _ in range(inflight):
        slots.acquire()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} batches failed, first: {errors[0]}")
    return elapsed


def _thread_cpu() -> dict[str, float]:
    """CPU-seconds (user + system) of each live thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        name = names.get(int(task.name), "other")
        cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return cpu


def _cpu_per_event(
    before: dict[str, float], after: dict[str, float], events: int
) -> dict[str, float]:
    """µs of CPU per event of each thread between two ``_thread_cpu`` readings."""
    return {
        name: round((after[name] - before.get(name, 0.0)) * 1e6 / events, 2)
        for name in sorted(after)
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    _CACHE.mkdir(exist_ok=True)
    directory = tempfile.mkdtemp(prefix="journal-writer-", dir=_CACHE)
    try:
        prefill = (
            _deliveries(args.shape, args.batch, args.prefill, args.seed, 1) if args.prefill else []
        )
        timed = _deliveries(args.shape, args.batch, args.events, args.seed, 2)
        options = WriterOptions(synchronous=args.synchronous, max_queued_events=10**9)
        path = os.path.join(directory, "journal.db")
        writer = JournalWriter(path, options, utc_now)
        writer.start()
        for index in args.without_index:
            # Same code, one index fewer: the cost of that index in the same run.
            conn = sqlite3.connect(path)
            try:
                conn.execute(f"DROP INDEX {index}")
            finally:
                conn.close()
        try:
            prefill_s = _drive(writer, prefill, args.inflight) if prefill else 0.0
            commits_before = writer.stats.commits
            cpu_before, process_before = _thread_cpu(), time.process_time()
            elapsed = _drive(writer, timed, args.inflight)
            # Before close: the threads' CPU for the timed events (close's own final
            # checkpoint and index catch-up come after, in the process figure only).
            cpu_after = _thread_cpu()
            commits = writer.stats.commits - commits_before
        finally:
            writer.close()
        process_s = time.process_time() - process_before
        timed_events = sum(len(d.events) for d in timed)
        size = sum(p.stat().st_size for p in Path(directory).iterdir())
        return {
            "question": "journal writer alone",
            "synchronous": args.synchronous,
            "shape": args.shape,
            "batch": args.batch,
            "inflight": args.inflight,
            "prefill_events": sum(len(d.events) for d in prefill),
            "prefill_events_per_s": round(sum(len(d.events) for d in prefill) / prefill_s, 1)
            if prefill_s
            else None,
            "events": timed_events,
            "seconds": round(elapsed, 3),
            "events_per_s": round(timed_events / elapsed, 1),
            "commits": commits,
            "batches_per_commit": round(len(timed) / max(1, commits), 2),
            "journal_bytes": size,
            "without_index": args.without_index,
            # µs of CPU an event: each thread's (writer, indexer, checkpoint, the driving
            # MainThread), and the whole process's including close.
            "cpu_us_per_event": _cpu_per_event(cpu_before, cpu_after, timed_events),
            "process_cpu_us_per_event": round(process_s * 1e6 / timed_events, 2),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Two journals in one process, one with the index ``--compare-index`` creates and one
    as streamd makes it, written in alternating chunks of the same deliveries, so both see
    the same machine noise."""
    _CACHE.mkdir(exist_ok=True)
    directory = tempfile.mkdtemp(prefix="journal-writer-compare-", dir=_CACHE)
    writers: dict[str, JournalWriter] = {}
    try:
        prefill = (
            _deliveries(args.shape, args.batch, args.prefill, args.seed, 1) if args.prefill else []
        )
        timed = _deliveries(args.shape, args.batch, args.events, args.seed, 2)
        options = WriterOptions(synchronous=args.synchronous, max_queued_events=10**9)
        for variant in ("with", "without"):
            path = os.path.join(directory, f"{variant}.db")
            writers[variant] = JournalWriter(path, options, utc_now)
            writers[variant].start()
            if variant == "with":
                conn = sqlite3.connect(path)
                try:
                    conn.execute(f"CREATE INDEX {args.compare_index}")
                finally:
                    conn.close()
            if prefill:
                _drive(writers[variant], prefill, args.inflight)
        rounds = max(1, args.rounds)
        size = max(1, len(timed) // rounds)
        seconds = {"with": 0.0, "without": 0.0}
        per_round: list[dict[str, float]] = []
        for r in range(rounds):
            chunk = timed[r * size : (r + 1) * size]
            order = ("with", "without") if r % 2 == 0 else ("without", "with")
            this: dict[str, float] = {}
            for variant in order:
                elapsed = _drive(writers[variant], chunk, args.inflight)
                seconds[variant] += elapsed
                this[variant] = round(sum(len(d.events) for d in chunk) / elapsed, 1)
            per_round.append(this)
        events = sum(len(d.events) for d in timed[: rounds * size])
        rates = {v: round(events / seconds[v], 1) for v in seconds}
        return {
            "question": f"journal writer with and without index {args.compare_index}",
            "synchronous": args.synchronous,
            "shape": args.shape,
            "batch": args.batch,
            "inflight": args.inflight,
            "prefill_events": sum(len(d.events) for d in prefill),
            "events_each": events,
            "rounds": rounds,
            "events_per_s": rates,
            "per_round_events_per_s": per_round,
            "cost": round(1 - rates["with"] / rates["without"], 3),
        }
    finally:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.journal_writer", description=__doc__)
    ap.add_argument("--synchronous", choices=("full", "normal"), default="full")
    ap.add_argument("--shape", choices=("legacy", "io"), default="legacy")
    ap.add_argument("--batch", type=int, default=500, help="events per batch (request)")
    ap.add_argument("--inflight", type=int, default=16, help="batches outstanding at once")
    ap.add_argument("--prefill", type=int, default=0, help="events journaled before timing")
    ap.add_argument("--events", type=int, default=200_000, help="events timed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--without-index",
        action="append",
        default=[],
        metavar="NAME",
        help="drop this index of journal.db before writing (to measure what it costs)",
    )
    ap.add_argument(
        "--compare-index",
        metavar="'NAME ON TABLE(COLUMNS)'",
        help="write two journals, one with this index added (CREATE INDEX ...) and one as "
        "streamd makes it, in alternating chunks",
    )
    ap.add_argument("--rounds", type=int, default=6, help="chunks per journal (--compare-index)")
    args = ap.parse_args(argv)
    print(orjson.dumps(compare(args) if args.compare_index else run(args)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
