"""PNG plots of a ``bench.ingest`` result: throughput against concurrency, ack latency.

    python -m bench.plots bench/out/ingest.json [--out-prefix bench/results/ingest]

Needs matplotlib (``pip install 'streamd[bench]'``; not a runtime dependency). Each
figure carries the machine, the versions and the command of the run in its footer.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import orjson

_SERIES: Final = (
    ("streamd-full-legacy500", "streamd FULL, legacy 500"),
    ("streamd-normal-legacy500", "streamd NORMAL, legacy 500"),
    ("streamd-full-io20", "streamd FULL, I/O 20"),
    ("streamd-normal-io20", "streamd NORMAL, I/O 20"),
)
_PEERS: Final = (
    ("baseline-{s}-c16", "hypercorn discarding", ":"),
    ("express-raised-{s}-c16", "Express (raised limit)", "--"),
    ("naive-{s}-c16", "naive Python", "-."),
    ("node-durable-{s}-c16", "durable Node (better-sqlite3, FULL)", (0, (5, 1, 1, 1))),
)
_CDF: Final = (
    "streamd-full-legacy500-c16",
    "streamd-normal-legacy500-c16",
    "streamd-full-io20-c16",
    "naive-legacy500-c16",
    "express-raised-legacy500-c16",
    "baseline-legacy500-c16",
    "latency-10k",
)


def _footer(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    v = m.get("versions", {})
    n = m.get("node") or {}
    other = [e["other_cores"] for e in doc["cases"] if "other_cores" in e]
    shared = (
        f" · other load during the cases {min(other):.2f}-{max(other):.2f} cores (shared machine)"
        if other and max(other) >= 0.1
        else ""
    )
    return (
        f"{m.get('when_utc', '?')} · {m.get('cpu_model', '?')}, {m.get('usable_cpus', '?')} CPUs · "
        f"Python {m.get('python')} · SQLite {m.get('sqlite')} · trio {v.get('trio')} · "
        f"hypercorn {v.get('hypercorn')} · node {n.get('node')} · express {n.get('express')} · "
        f"streamd {str(m.get('git_commit'))[:9]}{shared}\n"
        f"{m.get('command', '')}"
    )


def _rate(entry: dict[str, Any]) -> float | None:
    if "error" in entry or "load" not in entry:
        return None
    return float(entry["load"]["events_per_s"])


def draw(doc: dict[str, Any], prefix: Path) -> list[Path]:
    """Write ``PREFIX-throughput.png`` and ``PREFIX-latency.png``; return their paths."""
    by_name = {e["case"]["name"]: e for e in doc["cases"]}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=False)
    for ax, shape, title in ((axes[0], "legacy500", "legacy push, 500 events per request"),
                             (axes[1], "io20", "I/O Events, 20 events per request")):  # fmt: skip
        for key, label in _SERIES:
            if shape not in key:
                continue
            points = [
                (c, r)
                for c in (1, 4, 16)
                if (e := by_name.get(f"{key}-c{c}")) and (r := _rate(e)) is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        for pattern, label, style in _PEERS:
            e = by_name.get(pattern.format(s=shape))
            r = _rate(e) if e else None
            if r:
                ax.axhline(r, linestyle=style, color="grey", label=f"{label} (c16)")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 4, 16], ["1", "4", "16"])
        ax.set_yscale("log")
        ax.set_xlabel("connections")
        ax.set_ylabel("acknowledged events/s")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a subset run may have no case here
            ax.legend(fontsize=7)
    fig.text(0.01, 0.01, _footer(doc), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = prefix.with_name(prefix.name + "-throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(9, 5))
    for name in _CDF:
        e = by_name.get(name)
        q = e["load"].get("latency_quantiles_ms") if e and "load" in e else None
        if not q:
            continue
        ax.plot(q, [i / (len(q) - 1) for i in range(len(q))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ack latency, ms (request sent to response read)")
    ax.set_ylabel("share of acknowledged requests")
    ax.set_title("Ack latency distribution (unpaced cases: mostly queueing; latency-10k: paced)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.text(0.01, 0.01, _footer(doc), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = prefix.with_name(prefix.name + "-latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__)
    ap.add_argument("results", type=Path, help="a bench.ingest JSON file")
    ap.add_argument("--out-prefix", type=Path, help="default: the results path without .json")
    a = ap.parse_args(argv)
    doc = orjson.loads(a.results.read_bytes())
    for path in draw(doc, a.out_prefix or a.results.with_suffix("")):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
