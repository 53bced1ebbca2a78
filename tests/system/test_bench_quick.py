"""``make bench``'s orchestrator in its quick mode, on a tiny set of cases.

The whole ``--quick`` run takes about a minute, too long for every ``make test``; this
runs the same code path on the new peer and the emulator cases for half a second each,
and checks the JSON, the tables and (when matplotlib is installed) the plots. No figure
is asserted: only that the cases ran and their accounting adds up.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ._harness import REPO_ROOT, clean_env


def test_quick_bench_runs_the_peer_and_emulator_cases(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    cases = "naive-io20-c16,emit-discard-legacy500-c16,streamd-full-io1-c16,baseline-io1-c16"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ingest",
            "--quick",
            "--only",
            cases,
            "--duration",
            "0.5",
            "--no-plots",
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    by_name = {e["case"]["name"]: e for e in doc["cases"]}
    assert set(by_name) == set(cases.split(","))
    assert all("error" not in e for e in by_name.values()), by_name
    naive = by_name["naive-io20-c16"]
    assert naive["load"]["acked_events"] > 0
    # The naive receiver writes before it answers: everything acked is in its file.
    assert naive["logged"] == {"lines": naive["load"]["acked_events"], "unit": "events"}
    emit = by_name["emit-discard-legacy500-c16"]["load"]
    assert emit["emit"]["events_acked"] == emit["acked_events"] > 0
    assert emit["emit"]["events_given_up"] == 0
    # Every receiver's whole process tree: CPU-seconds per 1,000 requests and 1,000,000
    # events acknowledged, positive and finite.
    for name, entry in by_name.items():
        server, load = entry["server"], entry["load"]
        per_1k, per_1m = server["cpu_s_per_1k_requests"], server["cpu_s_per_1m_events"]
        assert 0 < per_1k < math.inf and 0 < per_1m < math.inf, (name, server)
        # The same CPU divided two ways: the ratio is the events per request.
        assert per_1m / per_1k == pytest.approx(
            1e3 / (load["acked_events"] / load["acked_batches"]), rel=0.05
        )
    single = by_name["streamd-full-io1-c16"]["load"]
    # Single CloudEvents: one event per request, each acknowledged as accepted by streamd.
    assert single["acked_events"] == single["acked_batches"] == single["accepted"] > 0
    assert "| naive Python receiver (json + append) |" in done.stdout
    assert "server CPU s / 1k requests" in done.stdout
    assert "| single CloudEvent (io-1) |" in done.stdout  # streamd beside hypercorn
    assert "`streamd emit` offered" in done.stdout
    assert doc["machine"]["command"].startswith("python")


@pytest.mark.parametrize("results", sorted((REPO_ROOT / "bench" / "results").glob("*.json")))
def test_plots_of_a_recorded_run(tmp_path: Path, results: Path) -> None:
    pytest.importorskip("matplotlib", reason="the 'bench' extra draws the plots")
    from bench.plots import draw

    pngs = draw(json.loads(results.read_text()), tmp_path / "run")
    assert [p.name for p in pngs] == ["run-throughput.png", "run-latency.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
