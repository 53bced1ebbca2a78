"""bench.edge end to end on a tiny attack: the sender's posts all get 200 under it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ._harness import REPO_ROOT


def test_edge_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "edge.json"
    argv = [sys.executable, "-m", "bench.edge", "--nofile", "256", "--idle", "200"]
    argv += ["--slow", "10", "--memory-idle", "300", "--duration", "1", "--out", str(out)]
    try:
        done = subprocess.run(
            argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
        )
    except subprocess.TimeoutExpired as exc:  # say which phase it was in
        err = exc.stderr or b""
        stderr = err.decode(errors="replace") if isinstance(err, bytes) else err
        raise AssertionError(f"bench.edge took over 300 s:\n{stderr[-3000:]}") from None
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())["versions"]["working-tree"]
    for case in ("quiet", "attack"):
        for connection in ("kept-alive", "fresh"):
            sent = result[case]["sender"][connection]
            assert sent["requests"] > 0 and set(sent["statuses"]) == {"200"}, (case, sent)
    attack = result["attack"]
    assert attack["attacker"]["idle_opened"] >= 200
    assert attack["log_tracebacks"] == 0
    assert len(result["idle-memory"]["rounds"]) == 3
