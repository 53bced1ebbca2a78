"""What the nesting-depth check costs decoding, and what decoding a body costs in memory.

    python -m bench.decode_depth [--rounds 7] [--ref REF] [--only cost|rss|worst] [--out FILE]

``cost``: one fresh process per (body, variant) and round decodes one body with
``decode_delivery`` in a loop (batches of calls, the best batch kept: the figure least
disturbed by other load), for the bodies ``legacy-500`` (a legacy push of 500
activities, ~250 kB), ``io-20`` (20 CloudEvents, ~15 kB) and ``single`` (one CloudEvent,
the contract's ``lads_single``), all from the emulator's generator with fixed seeds.
Variants: ``check`` (as shipped), ``no-check`` (the same code with ``check_depth``
replaced by a no-op in that process) and, with ``--ref``, ``ref`` (streamd as of that
commit, extracted as ``bench.ingest --ref`` does). Every round runs every variant of a
body back to back, in an order that rotates per round; the figure is the median over
rounds of each process's best, and the check's cost is ``check / no-check - 1``.

``rss``: one fresh process per (body, variant) reads the body from a file, then records
its peak RSS so far (interpreter, imports and the body), decodes the body
(``max_events`` as the variant says) and records the peak again while it still holds
the result, as the ingest app does until the journal has committed. The peak is
``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` is reported too but on Linux it
starts from the parent's RSS at ``fork`` (it survives ``exec``), so the bodies are
written by a child and the orchestrator stays small. Bodies:
``tiny-N`` (N events ``{"id": "..."}``, ~21 bytes each, as in issue 13's 7.8 MB body of
370k events), ``legacy-500`` and ``io-20``. Variants: ``cap-10000`` (the default
``server.max_events_per_request``), ``no-cap`` and, with ``--ref``, ``ref``.

``worst``: one fresh process times ``check_depth`` alone (best of 5) on 8 MiB bodies made
to cost it most: a forest of 63-level arrays (valid, 64 levels: every round of the
check runs), 4 million levels, one string of brackets per event, escaped quotes before
brackets; and ``decode_delivery`` on a body whose error is at its end (the path of the
bad byte is looked for only within the first MiB).

Prints one JSON object (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._report import print_summary
from bench._server import REPO, export_ref

BODIES_COST = ("legacy-500", "io-20", "single")
TINY_SIZES = (1_000, 10_000, 100_000, 370_000)
CAP = 10_000


def _bodies(directory: Path) -> dict[str, Path]:
    """Every body's file, written once by a child (the same bytes for every variant)."""
    names = [*BODIES_COST, *(f"tiny-{n}" for n in TINY_SIZES)]
    cmd = [sys.executable, "-m", "bench.decode_depth", "--child", "bodies", "--body"]
    subprocess.run([*cmd, str(directory)], cwd=REPO, check=True)
    return {name: directory / f"{name}.json" for name in names}


def _write_bodies(directory: Path) -> None:
    from streamd.emit.generate import iter_batches

    bodies: dict[str, bytes] = {
        "legacy-500": next(iter_batches("legacy", 500, seed=11, worker=0)),
        "io-20": next(iter_batches("io", 20, seed=11, worker=0)),
        "single": (REPO / "tests" / "fixtures" / "contract" / "lads_single.json").read_bytes(),
    }
    for n in TINY_SIZES:
        bodies[f"tiny-{n}"] = b"[" + b",".join(b'{"id":"%011d"}' % i for i in range(n)) + b"]"
    for name, body in bodies.items():
        (directory / f"{name}.json").write_bytes(body)


def _worst() -> dict[str, Any]:
    """Seconds of check_depth (and one decode) on bodies built to cost them most."""
    from streamd.core.normalise import decode_delivery
    from streamd.core.wire import check_depth
    from streamd.errors import PayloadError

    size = 8 << 20
    tree = b"[" * 63 + b"]" * 63
    bodies = {
        "forest-64-levels": b"[" + b",".join([tree] * (size // 127)) + b"]",
        "4m-levels": b"[" * (size // 2) + b"]" * (size // 2),
        "brackets-in-strings": b"[" + b",".join([b'"]]]]]]]]"'] * (size // 13)) + b"]",
        "escaped-quotes": b"[" + b",".join([b'"\\"]"'] * (size // 8)) + b"]",
    }
    out: dict[str, Any] = {}
    for name, body in bodies.items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            try:
                check_depth(body)
                verdict = "accepted"
            except PayloadError:
                verdict = "400"
            times.append(time.perf_counter() - start)
        out[name] = {"bytes": len(body), "verdict": verdict, "best_s": round(min(times), 4)}
    late = b'[{"id": "a"}' + b', {"id": "a"}' * (size // 13) + b", x]"
    start = time.perf_counter()
    try:
        decode_delivery(late)
    except PayloadError as exc:
        out["error-at-the-end"] = {"bytes": len(late), "message": str(exc)[:120]}
    out["error-at-the-end"]["decode_s"] = round(time.perf_counter() - start, 4)
    return out


def _peak_mib() -> tuple[float, float]:
    """(VmHWM, ru_maxrss) of this process in MiB."""
    status = Path("/proc/self/status").read_text()
    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(hwm.split()[1]) / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    if args.child == "bodies":
        _write_bodies(Path(args.body))
        return
    if args.child == "worst":
        print(json.dumps(_worst()))
        return
    import streamd.core.normalise as normalise

    body = Path(args.body).read_bytes()
    if args.variant == "no-check":
        normalise.check_depth = lambda *a, **k: None  # type: ignore[attr-defined]
    takes_cap = args.variant != "ref"
    out: dict[str, Any] = {"streamd": normalise.__file__, "bytes": len(body)}
    if args.child == "cost":
        decode = normalise.decode_delivery
        decode(body)
        per_batch = max(1, int(0.02 / _once(decode, body)))  # batches of ~20 ms
        best = float("inf")
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(per_batch):
                decode(body)
            best = min(best, (time.perf_counter() - start) / per_batch)
        out["best_us"] = best * 1e6
    else:
        before, before_ru = _peak_mib()
        cap = CAP if args.variant == "cap-10000" else None
        try:
            if takes_cap:
                delivery = normalise.decode_delivery(body, max_events=cap)
            else:
                delivery = normalise.decode_delivery(body)
            out["outcome"] = f"{len(delivery.events)} events"
        except Exception as exc:  # the outcome is the figure: 413 or 400 is reported
            out["outcome"] = f"{type(exc).__name__} {getattr(exc, 'status_hint', '')}".strip()
            delivery = None
        after, after_ru = _peak_mib()
        out["peak_before_mib"] = before
        out["peak_after_mib"] = after
        out["decode_peak_mib"] = after - before
        out["ru_maxrss_before_mib"] = before_ru
        out["ru_maxrss_after_mib"] = after_ru
        del delivery
    print(json.dumps(out))


def _once(decode: Any, body: bytes) -> float:
    start = time.perf_counter()
    decode(body)
    return max(time.perf_counter() - start, 1e-7)


def _run_child(
    mode: str, body: Path, variant: str, src: Path | None, seconds: float
) -> dict[str, Any]:
    env = dict(os.environ)
    # The snapshot's streamd (when given) before the working tree's; bench/ from the tree.
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (src, REPO) if p is not None)
    cmd = [sys.executable, "-m", "bench.decode_depth", "--child", mode, "--body", str(body)]
    cmd += ["--variant", variant, "--seconds", str(seconds)]
    with tempfile.TemporaryDirectory() as cwd:  # not REPO: sys.path[0] is the cwd
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {body.name} {variant}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    expected = str(src) if src is not None else str(REPO)
    if not result["streamd"].startswith(expected):
        raise RuntimeError(f"{variant} imported streamd from {result['streamd']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.5, help="per cost process")
    parser.add_argument("--ref", help="also measure streamd as of this git ref")
    parser.add_argument("--only", choices=("cost", "rss", "worst"))
    parser.add_argument("--out")
    parser.add_argument(
        "--child", choices=("cost", "rss", "bodies", "worst"), help=argparse.SUPPRESS
    )
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    src = None
    summary: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    if args.ref:
        sha, src = export_ref(args.ref, REPO / "bench" / ".cache")
        summary["ref"] = {"name": args.ref, "commit": sha}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _bodies(Path(tmp))
        if args.only in (None, "cost"):
            summary["cost"] = _cost(paths, src, args.rounds, args.seconds)
        if args.only in (None, "rss"):
            summary["rss"] = _rss(paths, src)
        if args.only in (None, "worst"):
            cmd = [sys.executable, "-m", "bench.decode_depth", "--child", "worst"]
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
            summary["worst"] = json.loads(done.stdout.strip().splitlines()[-1])
    print_summary(summary, args.out)


def _cost(paths: dict[str, Path], src: Path | None, rounds: int, seconds: float) -> dict[str, Any]:
    variants = ["check", "no-check"] + (["ref"] if src is not None else [])
    results: dict[str, Any] = {}
    for name in BODIES_COST:
        runs: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for variant in order:
                child = _run_child("cost", paths[name], variant, _src(variant, src), seconds)
                runs[variant].append(child["best_us"])
        med = {v: statistics.median(xs) for v, xs in runs.items()}
        entry: dict[str, Any] = {
            "bytes": paths[name].stat().st_size,
            "median_best_us": {v: round(x, 2) for v, x in med.items()},
            "check_cost_pct": round((med["check"] / med["no-check"] - 1) * 100, 2),
            "runs_us": {v: [round(x, 2) for x in xs] for v, xs in runs.items()},
        }
        if "ref" in med:
            entry["check_vs_ref_pct"] = round((med["check"] / med["ref"] - 1) * 100, 2)
        results[name] = entry
    return results


def _rss(paths: dict[str, Path], src: Path | None) -> dict[str, Any]:
    variants = ["cap-10000", "no-cap"] + (["ref"] if src is not None else [])
    names = [f"tiny-{n}" for n in TINY_SIZES] + ["legacy-500", "io-20"]
    results: dict[str, Any] = {}
    for name, variant in itertools.product(names, variants):
        child = _run_child("rss", paths[name], variant, _src(variant, src), 0)
        results.setdefault(name, {"bytes": child["bytes"]})[variant] = {
            k: round(v, 1) if isinstance(v, float) else v
            for k, v in child.items()
            if k not in ("streamd", "bytes")
        }
    return results


def _src(variant: str, src: Path | None) -> Path | None:
    return src if variant == "ref" else None


if __name__ == "__main__":
    main()
