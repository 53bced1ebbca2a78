"""journal export: the events grep prints, as JSON Lines or CSV; whole files; constant memory."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import streamd.inspect.export as export_module
from streamd.cli import main
from streamd.journal.writer import hold_writer_lock, lock_path
from tests.journals import FIXTURE_EVENTS, fixture_journal, generated_journal


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_journal(tmp_path_factory.mktemp("export") / "journal.db")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["journal", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_jsonl_export_equals_grep(capsys: pytest.CaptureFixture[str], journal: Path) -> None:
    for flags in ([], ["--stream", "activity", "--since", "2026-05-01"], ["--lead", "4412"]):
        _, exported, _ = run(capsys, "export", "--journal", str(journal), *flags)
        _, grepped, _ = run(capsys, "grep", "--journal", str(journal), "--format", "jsonl", *flags)
        assert exported == grepped and exported
    _, out, _ = run(capsys, "export", "--journal", str(journal))
    assert len(out.splitlines()) == FIXTURE_EVENTS


def test_csv_export(capsys: pytest.CaptureFixture[str], journal: Path) -> None:
    status, out, _ = run(capsys, "export", "--journal", str(journal), "--format", "csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == FIXTURE_EVENTS
    assert list(rows[0]) == [
        "seq", "event_key", "stream", "type", "munchkin_id", "activity_type_id", "lead_id",
        "occurred_at", "received_at", "source", "delivery", "event",
    ]  # fmt: skip
    second = rows[1]
    assert second["lead_id"] == "4412" and second["munchkin_id"] == "123-ABC-456"
    assert json.loads(second["event"])["activityType"] == "Change Data Value"
    assert rows[11]["lead_id"] == ""  # NULL: empty


def test_output_file_is_whole_or_absent(
    capsys: pytest.CaptureFixture[str],
    journal: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "out.jsonl"
    status, out, err = run(capsys, "export", "--journal", str(journal), "-o", str(target))
    assert status == 0 and out == ""
    assert f"exported {FIXTURE_EVENTS} events" in err
    assert len(target.read_text().splitlines()) == FIXTURE_EVENTS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]

    # A failure half-way leaves the previous file as it was and no temporary file.
    real = export_module.iter_pages  # type: ignore[attr-defined]

    def failing(*a: Any, **kw: Any) -> Any:
        pages = real(*a, **kw)
        yield next(pages)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "iter_pages", failing)
    before = target.read_bytes()
    monkeypatch.setattr(export_module, "PAGE", 3)
    with pytest.raises(OSError, match="No space"):
        main(["journal", "export", "--journal", str(journal), "-o", str(target)])
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_bad_output_and_flags(
    capsys: pytest.CaptureFixture[str], journal: Path, tmp_path: Path
) -> None:
    status, _, err = run(
        capsys, "export", "--journal", str(journal), "-o", str(tmp_path / "no" / "dir.jsonl")
    )
    assert status == 2 and "--output: cannot create" in err and "No such file" in err
    status, _, err = run(capsys, "export", "--journal", str(journal), "--until", "soon")
    assert status == 2 and "--until: 'soon'" in err


_MEASURE = """
import resource, sys
from streamd.cli import main
if sys.argv[1] == "export":
    status = main(["journal", "export", "--journal", sys.argv[2], "--format", sys.argv[3],
                   "-o", sys.argv[4]])
    assert status == 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def _peak_kib(*argv: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return int(done.stdout.split()[-1])


def test_export_of_a_large_journal_runs_in_constant_memory(tmp_path: Path) -> None:
    path = generated_journal(tmp_path / "journal.db", 100_000, batch=1000)
    size = path.stat().st_size  # the writer checkpointed (TRUNCATE) when it closed
    assert size > 80 * 1024 * 1024  # a journal larger than the memory bound below
    baseline = _peak_kib("import-only")
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"out.{fmt}"
        peak = _peak_kib("export", str(path), fmt, str(out))
        assert out.stat().st_size > 80 * 1024 * 1024
        growth_mib = (peak - baseline) / 1024
        # One page of rows and a small page cache, whatever the journal's size
        # (measured ~18 MiB; buffering the export would need more than 80 MiB).
        assert growth_mib < 48, f"{fmt}: peak RSS grew {growth_mib:.0f} MiB over the baseline"


def test_export_paces_itself_while_a_daemon_ingests(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a streamd holds the journal's writer lock, export keeps to 20,000 events/s
    by default (it would otherwise take CPU and disk from ingest); the pauses are
    recorded here, not slept."""
    path = generated_journal(tmp_path / "journal.db", 6000, batch=500)
    slept: list[float] = []

    class Clock:  # pauses are recorded and advance this clock; nothing sleeps
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            return cls.now

        @classmethod
        def sleep(cls, seconds: float) -> None:
            slept.append(seconds)
            cls.now += seconds

    monkeypatch.setattr(export_module, "time", Clock)
    lock = lock_path(str(path))

    # No daemon: full speed, no note.
    status, _, err = run(capsys, "export", "--journal", str(path))
    assert (status, slept) == (0, [])
    assert "exporting at most" not in err
    fd = hold_writer_lock(str(path))  # what a running streamd holds
    try:
        status, out, err = run(capsys, "export", "--journal", str(path))
        assert status == 0 and out.count("\n") == 6000
        assert "a streamd is ingesting into this journal: exporting at most 20000 events/s" in err
        # 6,000 events at 20,000/s: 0.3 s in all (work takes no time on this clock)
        assert sum(slept) == pytest.approx(0.3)
        slept.clear()
        status, _, err = run(capsys, "export", "--journal", str(path), "--max-rate", "0")
        assert (status, slept) == (0, [])
        status, _, err = run(capsys, "export", "--journal", str(path), "--max-rate", "1000")
        assert status == 0 and sum(slept) == pytest.approx(6.0)
    finally:
        os.close(fd)
    assert Path(lock).exists()
    with pytest.raises(SystemExit) as usage:
        run(capsys, "export", "--journal", str(path), "--max-rate", "x")
    assert usage.value.code == 2
    assert "'x' is not a rate from 0 to 10000000 events/s" in capsys.readouterr().err
