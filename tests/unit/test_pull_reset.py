"""``streamd journal pull-reset`` on a stopped daemon's journal (and its refusals)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from streamd.cli import main
from streamd.core import EventRecord, key_hash
from streamd.journal import Batch
from streamd.journal.writer import hold_writer_lock
from tests.journals import write_batches


def _journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.db"
    record = EventRecord("e1", key_hash("e1"), "other", None, None, None, None, None, "{}")
    write_batches(path, [Batch("adobe-journal", "t", "journal", [record], position="p0042")])
    return path


def saved(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT source, position, restart FROM pull_positions").fetchall()


def test_reset_clears_the_position_and_sets_where_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _journal(tmp_path)
    assert saved(path) == [("adobe-journal", "p0042", None)]
    assert main(["journal", "pull-reset", "--journal", str(path), "adobe-journal"]) == 0
    assert "position p0042 cleared" in capsys.readouterr().out
    assert saved(path) == [("adobe-journal", None, "oldest")]
    argv = ["journal", "pull-reset", "--journal", str(path), "adobe-journal", "--from", "latest"]
    assert main(argv) == 0
    assert saved(path) == [("adobe-journal", None, "latest")]


def test_unknown_pull_bad_flag_and_a_running_daemon_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _journal(tmp_path)
    assert main(["journal", "pull-reset", "--journal", str(path), "nope"]) == 1
    err = capsys.readouterr().err
    assert "no pull named 'nope'" in err and "adobe-journal" in err
    with pytest.raises(SystemExit) as info:
        main(["journal", "pull-reset", "--journal", str(path), "adobe-journal", "--from", "x"])
    assert info.value.code == 2
    capsys.readouterr()
    fd = hold_writer_lock(str(path))  # as a running streamd does
    try:
        # A daemon holds the journal: the command would ask it through its admin listener,
        # but that daemon left no daemon.json beside the journal (a running pull is reset
        # over HTTP: tests/integration/test_pull.py).
        argv = ["journal", "pull-reset", "--journal", str(path)]
        assert main([*argv, "adobe-journal"]) != 0
        err = capsys.readouterr().err
        assert f"streamd is running on {path}, but there is no " in err
        assert "give --admin-url, or stop it to make this change offline" in err
    finally:
        os.close(fd)
    assert saved(path) == [("adobe-journal", "p0042", None)]  # nothing changed
    missing = tmp_path / "none" / "journal.db"
    assert main(["journal", "pull-reset", "--journal", str(missing), "adobe-journal"]) != 0
    assert "no journal here" in capsys.readouterr().err
