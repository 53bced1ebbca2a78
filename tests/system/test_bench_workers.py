"""bench.workers end to end on a tiny case: both settings ingest, every request gets 200."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ._harness import REPO_ROOT


def test_workers_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    argv = [sys.executable, "-m", "bench.workers", "--duration", "1", "--rounds", "1"]
    argv += ["--cases", "io20-c16", "--no-baseline", "--quiet-timeout", "0", "--out", str(out)]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {(r["case"], r["workers"]) for r in result["runs"]} == {
        ("io20-c16", 0),
        ("io20-c16", 1),
    }
    for run in result["runs"]:
        figures = run["figures"]
        assert figures["errors"] == {}, figures  # every request answered 200
        assert figures["exit_code"] == 0
        assert figures["requests_per_s"] > 0
    with_worker = result["summary"]["io20-c16 workers=1"]
    # The worker's CPU is counted with the main process's: more than the main alone.
    assert with_worker["median_server_cores"] > with_worker["median_main_cores"]
    assert "| io20-c16 |" in done.stdout


def test_workers_benchmark_refuses_unknown_cases() -> None:
    argv = [sys.executable, "-m", "bench.workers", "--cases", "io20-c8"]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown case(s) io20-c8" in done.stderr
