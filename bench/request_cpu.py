"""CPU per small delivery: streamd as of several commits side by side, alternating.

    python -m bench.request_cpu --ref main --ref HEAD [--rounds 3] [--count 4000]
        [--shape io --batch 20 --concurrency 16] [--baseline] [--out FILE]

Each round starts, for every ``--ref`` in turn (the order rotating by round), a fresh
``streamd serve`` (``synchronous = FULL``, a new data directory) from that commit;
``--baseline`` adds ``bench.baseline_app`` (hypercorn reading and discarding the bodies).
``--warmup`` requests first, then ``--count`` more (``bench.loadgen``, its own process,
keep-alive connections), and until the server went idle after them. Per acknowledged
request: the server's user + system CPU (``/proc/PID/stat``), its event-loop thread's
alone (the main thread, ``/proc/PID/task/PID/stat``), each journal thread's
(``journal-writer``, ``journal-indexer``, ``journal-ckpt``, from ``schedstat``, where
the streamd measured names its threads), and the load generator's
(``client_cpu_s``: a fixed amount of work, so when it moves the machine's speed moved,
and the server's CPU over the client's is the steadier figure). Prints one JSON line per
run and then the medians per ref; ``--out`` writes them all as one JSON document.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench._server import REPO, ServerProcess, export_ref, start_baseline, start_streamd
from bench.ingest import CACHE, Case, run_loadgen, settle

_TICK = os.sysconf("SC_CLK_TCK")
# streamd's journal threads, by their OS names (an older streamd has none: not reported)
_THREADS = ("journal-writer", "journal-indexer", "journal-ckpt")


def _thread_cpu_s(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _threads_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds run so far per thread name (``comm``; streamd names its journal
    threads, ``streamd/threads.py``), from ``schedstat``: on some kernels a thread's
    ``stat`` times read 0 for every thread but the main one. A thread that ended is
    not counted."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ran = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        out[name] = out.get(name, 0.0) + ran
    return out


def _one(
    name: str, server: ServerProcess, token: str, case: Case, a: argparse.Namespace, logdir: Path
) -> dict[str, Any]:
    url = server.base_url + "/events"
    reuse = ("--reuse",) if name == "baseline" else ()
    run_loadgen(url, token, case, logdir, "--count", str(a.warmup), *reuse, seed=2)
    cpu0, loop0 = server.main_cpu_s(), _thread_cpu_s(server.pid, server.pid)
    threads0 = _threads_cpu_s(server.pid)
    load = run_loadgen(url, token, case, logdir, "--count", str(a.count), *reuse)
    settle(server)
    cpu, loop = server.main_cpu_s() - cpu0, _thread_cpu_s(server.pid, server.pid) - loop0
    threads = _threads_cpu_s(server.pid)
    requests = load["acked_batches"]
    per_thread = {
        name: round(1e6 * (ran - threads0.get(name, 0.0)) / requests, 1)
        for name, ran in sorted(threads.items())
        if name in _THREADS
    }
    return {
        "name": name,
        "requests": requests,
        "server_cpu_s": round(cpu, 3),
        "us_per_request": round(1e6 * cpu / requests, 1),
        "loop_us_per_request": round(1e6 * loop / requests, 1),
        **{f"{name}_us_per_request": us for name, us in per_thread.items()},
        "client_us_per_request": round(1e6 * load["client_cpu_s"] / requests, 1),
        "server_over_client": round(cpu / load["client_cpu_s"], 3),
        "requests_per_s": round(load["batches_per_s"], 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__)
    ap.add_argument("--ref", action="append", default=[], help="a git commit (repeatable)")
    ap.add_argument("--baseline", action="store_true", help="add bench.baseline_app")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=4000, help="requests measured per run")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--shape", choices=("io", "legacy"), default="io")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    versions = [(ref, *export_ref(ref, CACHE)) for ref in a.ref]
    names = [f"{ref}@{sha[:7]}" for ref, sha, _ in versions] + (["baseline"] if a.baseline else [])
    if not names:
        ap.error("nothing to measure: give --ref (and/or --baseline)")
    src = {f"{ref}@{sha[:7]}": path for ref, sha, path in versions}
    case = Case("request-cpu", "streamd", a.shape, a.batch, a.concurrency, "full")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="request-cpu-") as tmp:
        logdir = Path(tmp) / "logs"
        for round_ in range(a.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                work = Path(tmp) / f"run-{round_}"
                (work / "data").mkdir(parents=True)
                if name == "baseline":
                    server, token = start_baseline(logdir, name), "bench"
                else:
                    server, token = start_streamd(
                        work, work / "data", "full", logdir, name, src[name]
                    )
                try:
                    run = _one(name, server, token, case, a, logdir)
                finally:
                    server.stop()
                    shutil.rmtree(work, ignore_errors=True)
                run["round"] = round_
                runs.append(run)
                print(orjson.dumps(run).decode(), flush=True)
    keys = (
        "us_per_request",
        "loop_us_per_request",
        *(f"{thread}_us_per_request" for thread in _THREADS),
        "client_us_per_request",
        "server_over_client",
    )
    medians = {
        name: {
            k: statistics.median(found)
            for k in keys
            if (found := [r[k] for r in runs if r["name"] == name and k in r])
        }
        for name in names
    }
    print(orjson.dumps({"medians": medians}).decode())
    if a.out:
        settings = {"shape": a.shape, "batch": a.batch, "concurrency": a.concurrency}
        doc = {"settings": {**settings, "count": a.count, "repo": str(REPO)}, "runs": runs}
        a.out.write_bytes(orjson.dumps({**doc, "medians": medians}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
