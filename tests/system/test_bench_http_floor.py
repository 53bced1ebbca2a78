"""``bench.http_floor``: every receiver serves the load generator's bodies whole, and
the four that run streamd's ingest app decode every event of them (two journal them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench._server import REPO
from bench.http_floor import RECEIVERS


def test_each_receiver_answers_every_request_and_reports_its_cpu(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    # 1,000 requests: the cheapest receivers spend ~60 µs each, and /proc counts CPU in
    # 10 ms ticks (200 requests once read as 0.0 s in CI).
    argv = [sys.executable, "-m", "bench.http_floor", "--rounds", "1", "--count", "1000"]
    argv += ["--warmup", "20", "--concurrency", "4", "--out", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    runs = {run["name"]: run for run in doc["runs"]}
    assert sorted(runs) == sorted(RECEIVERS)
    for name, run in runs.items():
        assert (run["requests"], run["failed"]) == (1000, 0), run
        assert run["us_per_request"] > 0 and run["requests_per_s"] > 0, run
        # Bodies of 20 events: only streamd's app decodes them (the others discard).
        # With a real journal, "accepted" is what the journal took as new: every event.
        decodes = name.endswith(("-app", "-journal"))
        assert run["accepted"] == (1000 * 20 if decodes else 0), run
    assert sorted(doc["medians"]) == sorted(RECEIVERS)
    assert "| edge-app |" in done.stdout


def test_an_unknown_receiver_is_refused_by_name() -> None:
    argv = [sys.executable, "-m", "bench.http_floor", "--only", "raw,nginx"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown receiver(s) nginx" in done.stderr
