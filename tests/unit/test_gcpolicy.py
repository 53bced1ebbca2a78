"""The serving processes' garbage-collector settings (streamd/service/gcpolicy.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from streamd.cli import main
from streamd.service import gcpolicy, worker

_CHECK = """
import gc
from streamd.service import gcpolicy
before = gc.get_threshold()
gcpolicy.tune()
after = gc.get_threshold()
frozen = gc.get_freeze_count()
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after tune(): still collected
del a, b
print(before[1:] == after[1:], after[0], frozen > 1000, gc.collect() >= 2)
"""


def test_tune_raises_the_young_threshold_and_freezes_what_exists() -> None:
    # In a process of its own: the test run's collector keeps its settings.
    out = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["True", str(gcpolicy.YOUNG), "True", "True"]


def _record(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace tune() and trio.run() with recorders of the order they are called in."""
    calls: list[str] = []
    monkeypatch.setattr(gcpolicy, "tune", lambda: calls.append("tune"))

    def run(*_args: Any, **_kw: Any) -> int:
        calls.append("run")
        return 0

    monkeypatch.setattr(trio, "run", run)
    return calls


def test_serve_tunes_the_collector_before_it_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _record(monkeypatch)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert main(["serve", "--data-dir", str(tmp_path / "data")]) == 0
    assert calls == ["tune", "run"]


def test_an_ingest_worker_tunes_the_collector_before_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _record(monkeypatch)
    monkeypatch.setattr(worker, "configure_logging", lambda *_: None)
    assert worker.main(["--ipc-fd", "3", "--listen-fds", "4"]) == 0
    assert calls == ["tune", "run"]
