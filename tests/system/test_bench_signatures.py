"""bench.signatures end to end on a tiny case: both sources answer 200 to every request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ._harness import REPO_ROOT


def test_signature_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "signatures.json"
    argv = [sys.executable, "-m", "bench.signatures", "--duration", "1", "--rounds", "1"]
    argv += ["--per-case", "300", "--out", str(out)]
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for case in ("token", "signed"):
        (run,) = result["cases"][case]
        assert set(run["statuses"]) == {"200"}, run  # signed requests verified, none refused
        assert run["requests_per_s"] > 0
    assert result["median_requests_per_s"]["signed"] > 0
