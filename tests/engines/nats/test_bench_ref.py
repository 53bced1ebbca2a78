"""``bench.drain --ref``: a sink case run with the working tree and with streamd at a
git ref, one after the other, on the same journal (how the nats figures were taken)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.engines._nats import NatsCluster
from tests.system._harness import REPO_ROOT, clean_env


def test_a_sink_case_runs_with_the_working_tree_and_with_a_ref(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    # nats_cluster: skips (fails under CI) without nats-server, as the other nats tests;
    # the benchmark starts a one-node server of its own.
    out = tmp_path / "drain.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.drain", "--only", "sink-nats", "--events", "500",
         "--ref", "HEAD", "--out", str(out)],
        cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = {row["case"]: row for row in json.loads(out.read_text())["cases"]}
    assert set(rows) == {"sink-nats", "sink-nats@HEAD"}
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert rows["sink-nats@HEAD"]["commit"] == head
    assert rows["sink-nats"]["streamd"] == str(REPO_ROOT / "streamd")
    assert rows["sink-nats@HEAD"]["streamd"] == str(
        REPO_ROOT / "bench" / ".cache" / f"src-{head[:12]}" / "streamd"
    )
    for row in rows.values():
        assert row["finished"] and row["drained"] == row["backlog"] == 500
