"""bench.journal_writer on a few thousand events: its rate and its CPU per thread."""

from __future__ import annotations

import json
import subprocess
import sys

from ._harness import REPO_ROOT


def test_journal_writer_benchmark_reports_cpu_per_thread() -> None:
    argv = [sys.executable, "-m", "bench.journal_writer", "--shape", "io", "--batch", "20"]
    argv += ["--inflight", "4", "--events", "4000"]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["events"] == 4000 and result["commits"] > 0
    threads = result["cpu_us_per_event"]
    assert {"MainThread", "journal-writer", "journal-indexer", "journal-checkpoint"} <= set(
        threads
    ), threads
    assert all(value >= 0 for value in threads.values()), threads
    # The whole process did the work (decoding before the clock is not counted): some CPU.
    assert result["process_cpu_us_per_event"] > 0
