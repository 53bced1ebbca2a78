"""bench.pull end to end on a tiny journal: every event is pulled, in both cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ._harness import REPO_ROOT


def test_pull_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "pull.json"
    argv = [sys.executable, "-m", "bench.pull", "--events", "3000", "--limits", "500"]
    argv += ["--rounds", "1", "--out", str(out)]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    cases = {run["case"]: run for run in result["runs"]}
    assert set(cases) == {"emulator alone limit=500", "pull limit=500"}
    assert all(run["events"] == 3000 and run["events_per_s"] > 0 for run in cases.values())
    assert cases["pull limit=500"]["server_peak_rss_mib"] > 0
