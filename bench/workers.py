"""Does ``server.workers`` pay on this machine? workers = 0 against workers = N, same run.

    python -m bench.workers [--workers 1] [--rounds 3] [--duration 10]
        [--cases legacy500-c16,io20-c16] [--out bench/out/workers.json]

Each round runs every case once per setting, the settings alternating (0 first in
odd rounds, N first in even ones, so a drift of the machine's load is shared), each
against a fresh ``streamd serve`` (FULL, empty journal, no sinks) with the load
generator of ``bench.ingest`` in its own process. Cases: ``legacy500-c16``,
``io20-c16``, ``legacy500-c64``, ``io20-c64`` (500-event legacy pushes or 20-event
I/O batches over 16 or 64 keep-alive connections, unpaced), ``prefilled-2m``
(legacy500-c16 into a journal already holding 2,000,000 events, built once and
cached like ``bench.ingest``'s) and ``baseline-io20-c16`` (hypercorn reading and
discarding: the reference of issue 2's I/O target; run once per round). Prints
one JSON object (every run, and per case and setting the median) and a markdown
table of the medians; server cores and peak RSS count the workers too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import orjson

from bench._machine import machine_facts
from bench.ingest import CACHE, RUN_DIR, Case, Settings, _run_case
from streamd.emit.generate import Shape

BENCH: Final = Path(__file__).resolve().parent
_SHAPES: Final[dict[str, tuple[Shape, int]]] = {"legacy500": ("legacy", 500), "io20": ("io", 20)}
CASES: Final = ("legacy500-c16", "io20-c16", "legacy500-c64", "io20-c64", "prefilled-2m")
PREFILL: Final = 2_000_000


def make_case(name: str, workers: int, duration: float) -> Case:
    """The ``bench.ingest`` case behind one of :data:`CASES` with ``server.workers``."""
    if name == "baseline-io20-c16":
        return Case(name, "baseline", "io", 20, 16, duration=duration)
    if name == "prefilled-2m":
        return Case(
            f"{name}-w{workers}",
            "streamd",
            "legacy",
            500,
            16,
            "full",
            prefill=PREFILL,
            duration=duration,
            workers=workers,
        )
    load, _, conns = name.partition("-c")
    shape, batch = _SHAPES[load]
    return Case(
        f"{name}-w{workers}",
        "streamd",
        shape,
        batch,
        int(conns),
        "full",
        duration=duration,
        workers=workers,
    )


def _figures(entry: dict[str, Any]) -> dict[str, Any]:
    if "error" in entry:
        return {"error": entry["error"]}
    load, server = entry["load"], entry["server"]
    return {
        "events_per_s": load["events_per_s"],
        "requests_per_s": load["batches_per_s"],
        "p99_ms": (load["latency_ms"] or {}).get("p99"),
        "server_cores": server["cores_used"],
        "main_cores": server.get("main_cores_used"),
        "peak_rss_mib": server["peak_rss_mib"],
        "main_peak_rss_mib": server.get("main_peak_rss_mib"),
        "other_cores": entry.get("other_cores", 0.0),
        "errors": load["errors"],
        "exit_code": server["exit_code"],
    }


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if "error" not in r and r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case and setting: the runs' figures and their medians."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = f"{run['case']} workers={run['workers']}"
        out.setdefault(key, {"runs": []})["runs"].append(run["figures"])
    for entry in out.values():
        for metric in (
            "events_per_s",
            "requests_per_s",
            "p99_ms",
            "server_cores",
            "main_cores",
            "peak_rss_mib",
            "main_peak_rss_mib",
        ):
            entry[f"median_{metric}"] = _median(entry["runs"], metric)
    return out


def table(summary: dict[str, dict[str, Any]], workers: int) -> str:
    """Markdown: each case's medians with workers = 0 and = N, and the ratio."""
    head = [
        "case",
        "events/s w0",
        f"events/s w{workers}",
        "ratio",
        "requests/s w0",
        f"requests/s w{workers}",
        "p99 ms w0 / wN",
        "server cores w0 / wN",
        "peak RSS MiB w0 / wN (main)",
    ]
    rows = [head, ["---"] * len(head)]
    cases = sorted({k.split(" ")[0] for k in summary}, key=lambda c: (c.startswith("b"), c))
    for case in cases:
        a, b = summary.get(f"{case} workers=0", {}), summary.get(f"{case} workers={workers}", {})
        if not b:  # the baseline
            rows.append(
                [
                    case,
                    _f(a.get("median_events_per_s")),
                    "",
                    "",
                    _f(a.get("median_requests_per_s")),
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        ea, eb = a.get("median_events_per_s"), b.get("median_events_per_s")
        ratio = f"{eb / ea:.2f}" if ea and eb else ""
        rows.append(
            [
                case,
                _f(ea),
                _f(eb),
                ratio,
                _f(a.get("median_requests_per_s")),
                _f(b.get("median_requests_per_s")),
                f"{_f(a.get('median_p99_ms'), 1)} / {_f(b.get('median_p99_ms'), 1)}",
                f"{_f(a.get('median_server_cores'), 2)} / {_f(b.get('median_server_cores'), 2)}",
                f"{_f(a.get('median_peak_rss_mib'))} / {_f(b.get('median_peak_rss_mib'))} "
                f"({_f(b.get('median_main_peak_rss_mib'))})",
            ]
        )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _f(x: float | None, digits: int = 0) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    ap.add_argument("--workers", type=int, default=1, help="N to compare with 0 (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument(
        "--cases",
        default="legacy500-c16,io20-c16",
        help=f"comma-separated, of {', '.join(CASES)} (default: legacy500-c16,io20-c16)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip baseline-io20-c16")
    ap.add_argument(
        "--quiet-timeout",
        type=float,
        default=30.0,
        help="before each run, wait up to this long for other CPU load to stop (0: don't)",
    )
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "workers.json")
    a = ap.parse_args(argv)
    names = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown or not names:
        ap.error(
            f"unknown case(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(CASES)}"
        )
    if not 1 <= a.workers <= 16 or a.rounds < 1 or a.duration <= 0:
        ap.error("--workers 1 to 16, --rounds at least 1, --duration above 0")
    out: Path = a.out
    logdir = out.parent / "logs" / out.stem
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        quick=False,
        throughput_s=a.duration,
        latency_s=a.duration,
        sqlite_events=0,
        prefill_small=PREFILL,
        prefill_big=PREFILL,
        logdir=logdir,
        src=None,
    )
    runs: list[dict[str, Any]] = []
    try:
        for rnd in range(1, a.rounds + 1):
            order = (0, a.workers) if rnd % 2 else (a.workers, 0)
            plan = [(name, w) for name in names for w in order]
            if not a.no_baseline:
                plan.append(("baseline-io20-c16", 0))
            for i, (name, workers) in enumerate(plan, 1):
                case = make_case(name, workers, a.duration)
                label = f"[round {rnd}/{a.rounds}, {i}/{len(plan)}]"
                entry = _run_case(case, label, settings, a.quiet_timeout)
                runs.append(
                    {
                        "round": rnd,
                        "case": name,
                        "workers": workers,
                        "figures": _figures(entry),
                        "raw": entry,
                    }
                )
    finally:
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    summary = summarise(runs)
    doc = {
        "question": "server.workers = 0 against N, same run",
        "machine": machine_facts(BENCH.parent, CACHE),
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
            "workers": a.workers,
            "rounds": a.rounds,
            "cases": names,
        },
        "summary": summary,
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str) + b"\n")
    os.replace(tmp, out)
    print(table(summary, a.workers))
    print(f"\nresults: {out}", file=sys.stderr)
    failed = any("error" in r["figures"] or r["figures"].get("exit_code") != 0 for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
