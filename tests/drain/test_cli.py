"""``streamd sinks`` and ``streamd dlq`` on a journal file: output, changes, refusals, errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from streamd.cli import main
from streamd.drain import open_drain
from streamd.drain.sinks.base import CONFIRMED, permanent
from streamd.journal import WriterOptions, open_journal

from .conftest import Recorder, append, spec, wait_until


@pytest.fixture
async def journal_file(tmp_path: Path) -> Path:
    """A stopped daemon's journal: sink ``hook`` with 3 dead letters, sink ``files`` caught up."""
    path = tmp_path / "journal.db"
    async with open_journal(str(path), WriterOptions()) as journal:
        await append(journal, ["d1", "d2", "d3"])
        await append(journal, ["ok"])
        hook = Recorder(lambda n: permanent("HTTP 400", "bad") if n == 0 else CONFIRMED)
        async with open_drain(
            journal, [spec("hook", hook, batch_size=3, workers=1), spec("files", Recorder())]
        ) as drain:
            await wait_until(lambda: all(s.cursor == 4 for s in drain.statistics()), "drained")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def state(path: Path) -> dict[str, tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT name, state, cursor FROM sinks")}
    finally:
        conn.close()


async def test_sinks_list(journal_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "sinks", "list", "--journal", str(journal_file), "--json")
    assert status == 0
    sinks = {s["name"]: s for s in json.loads(out)}
    assert sinks["hook"]["dead_letters"] == 3 and sinks["hook"]["last_error"] == "HTTP 400"
    assert sinks["files"]["cursor"] == 4 and sinks["files"]["lag_events"] == 0
    _, out, _ = run(capsys, "sinks", "list", "--journal", str(journal_file))
    assert "hook" in out and "dead letters 3" in out


async def test_state_changes_and_replay(
    journal_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j = ["--journal", str(journal_file)]
    assert run(capsys, "sinks", "pause", "hook", *j)[0] == 0
    assert state(journal_file)["hook"] == ("paused", 4)
    assert run(capsys, "sinks", "disable", "files", *j)[0] == 0
    status, _, err = run(capsys, "sinks", "resume", "files", *j)
    assert status == 1 and "is disabled; enable it instead" in err
    assert state(journal_file)["files"] == ("disabled", 4)
    assert run(capsys, "sinks", "enable", "files", *j)[0] == 0
    assert run(capsys, "sinks", "resume", "hook", *j)[0] == 0
    status, out, _ = run(capsys, "sinks", "replay", "files", "--from-seq", "2", *j)
    assert status == 0 and "from seq 2" in out
    assert state(journal_file) == {"hook": ("active", 4), "files": ("active", 1)}
    assert run(capsys, "sinks", "replay", "files", "--since", "2000-01-01T00:00:00Z", *j)[0] == 0
    assert state(journal_file)["files"] == ("active", 0)
    assert run(capsys, "sinks", "replay", "files", "--since", "2999-01-01", *j)[0] == 0
    assert state(journal_file)["files"] == ("active", 4)


async def test_dead_letters(journal_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j = ["--journal", str(journal_file)]
    status, out, _ = run(capsys, "dlq", "list", "--sink", "hook", "--json", *j)
    assert status == 0
    letters = json.loads(out)
    assert [d["event_id"] for d in letters] == ["d1", "d2", "d3"]
    assert letters[0]["last_response"] == "bad" and "event" not in letters[0]
    _, out, _ = run(capsys, "dlq", "list", "--after-id", "1", "--limit", "1", "--json", *j)
    assert [d["id"] for d in json.loads(out)] == [2]
    _, out, _ = run(capsys, "dlq", "show", "2", "--json", *j)
    assert json.loads(json.loads(out)["event"]) == {"id": "d2", "n": 1}
    assert run(capsys, "dlq", "retry", "--sink", "hook", "1", "3", *j)[1].startswith("2 ")
    _, out, _ = run(capsys, "dlq", "list", "--json", *j)
    assert [d["retry"] for d in json.loads(out)] == [True, False, True]
    assert run(capsys, "dlq", "drop", "--sink", "hook", "--all", *j)[1].startswith("3 ")
    assert run(capsys, "dlq", "list", *j)[1] == "no dead letters\n"


async def test_changes_refused_while_a_daemon_holds_the_journal(
    journal_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A process holds the writer lock but describes no admin listener (no daemon.json):
    # the command says which journal, which file it looked for, and what to do; it never
    # falls back to a default address or to the current directory's data.
    async with open_journal(str(journal_file), WriterOptions()):
        status, _, err = run(capsys, "sinks", "pause", "hook", "--journal", str(journal_file))
        assert status == 1
        assert f"streamd is running on {journal_file}" in err
        assert str(journal_file.parent / "daemon.json") in err
        assert "give --admin-url, or stop it to make this change offline" in err
        assert "Traceback" not in err
        # Reading is always safe.
        assert run(capsys, "sinks", "list", "--journal", str(journal_file))[0] == 0
    assert state(journal_file)["hook"] == ("active", 4)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["sinks", "pause", "nope"], 1, "no sink named 'nope'"),
        (["sinks", "replay", "nope", "--from-seq", "1"], 1, "no sink named 'nope'"),
        (["sinks", "replay", "hook", "--from-seq", "0"], 2, "0 is not between 1"),
        (["sinks", "replay", "hook", "--from-seq", "x"], 2, "'x' is not a whole number"),
        (["sinks", "replay", "hook"], 2, "one of the arguments --from-seq --since is required"),
        (["sinks", "replay", "hook", "--since", "soon"], 2, "'soon' is not a duration or a time"),
        (["dlq", "show", "999"], 1, "no dead letter with id 999"),
        (["dlq", "retry", "--sink", "hook"], 2, "give dead letter ids or --all"),
        (["dlq", "drop", "--sink", "hook", "1", "--all"], 2, "give dead letter ids or --all"),
        (["dlq", "list", "--limit", "100000"], 2, "not between 1 and 10000"),
        (["dlq", "drop", "--sink", "hook", "-5"], 2, ""),
    ],
)
async def test_bad_requests(
    journal_file: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    try:
        got = main([*argv, "--journal", str(journal_file)])
    except SystemExit as exc:  # argparse's usage errors
        got = int(exc.code or 0)
    err = capsys.readouterr().err
    assert got == status
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", [b"not a database at all" * 50, b""])
async def test_hostile_journal_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(content)
    for argv in (["sinks", "list"], ["sinks", "pause", "x"], ["dlq", "list"]):
        status, _, err = run(capsys, *argv, "--journal", str(path))
        assert status == 1, (argv, err)
        assert err.startswith("streamd: journal error: ") and "Traceback" not in err
    assert path.read_bytes() == content  # never "repaired", never partly written


async def test_replay_a_filtered_range(
    journal_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    j = ["--journal", str(journal_file)]
    status, out, _ = run(
        capsys, "sinks", "replay", "files", "--from-seq", "2", "--to-seq", "3",
        "--type", "com.adobe.platform.marketo.activity.*", "--stream", "activity", *j,
    )  # fmt: skip
    assert status == 0 and out.startswith("2 events queued")
    assert state(journal_file)["files"] == ("active", 4)  # the cursor stays
    _, out, _ = run(capsys, "dlq", "list", "--sink", "files", "--json", *j)
    queued = json.loads(out)
    assert [(d["seq"], d["reason"], d["retry"]) for d in queued] == [
        (2, "replay requested", True),
        (3, "replay requested", True),
    ]
    _, out, _ = run(capsys, "sinks", "replay", "files", "--from-seq", "1", "--to-seq", "4",
                    "--type", "nothing*", *j)  # fmt: skip
    assert out.startswith("0 events queued")
    # The running sink delivers them, then they are gone from the dead letters.
    async with open_journal(str(journal_file), WriterOptions()) as journal:
        files = Recorder()
        async with open_drain(journal, [spec("files", files)]):
            await wait_until(lambda: sorted(files.keys) == ["d2", "d3"], "replayed")
    _, out, _ = run(capsys, "dlq", "list", "--sink", "files", *j)
    assert out == "no dead letters\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to-seq", "3"], "one of the arguments --from-seq --since is required"),
        (["--since", "2026-01-01", "--to-seq", "3"], "--to-seq needs --from-seq"),
        (["--from-seq", "5", "--to-seq", "3"], "--to-seq needs --from-seq at or below it"),
        (["--from-seq", "1", "--type", "x*"], "--stream and --type need --to-seq"),
    ],
)
async def test_bad_replay_ranges(
    journal_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    try:
        status = main(["sinks", "replay", "files", *argv, "--journal", str(journal_file)])
    except SystemExit as exc:
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2 and message in err


async def test_a_sink_paused_for_failures_shows_in_the_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamd.drain import RetrySettings
    from streamd.drain.sinks.base import transient

    path = tmp_path / "journal.db"
    retry = RetrySettings(backoff_base=0.01, backoff_cap=0.01, pause_after=2, probe_interval=60)
    async with open_journal(str(path), WriterOptions()) as journal:
        await append(journal, ["x"])
        down = Recorder(lambda n: transient("HTTP 502 from the destination"))
        async with open_drain(journal, [spec("down", down, retry=retry)]) as drain:
            await wait_until(lambda: drain.statistics()[0].state == "auto-paused", "paused")
            # Visible to the file-based listing while the daemon runs.
            await wait_until(
                lambda: json.loads(run(capsys, "sinks", "list", "--journal", str(path),
                                       "--json")[1])[0]["state"] == "auto-paused",
                "saved",
            )  # fmt: skip
    (row,) = json.loads(run(capsys, "sinks", "list", "--journal", str(path), "--json")[1])
    assert row["state"] == "auto-paused"
    assert row["last_error"] == "HTTP 502 from the destination"


def test_check_config_reads_the_sinks_secret_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "streamd.toml"
    missing = tmp_path / "no-such-secret"
    config.write_text(
        f'[[sinks]]\nname = "hook"\nkind = "http"\n[sinks.http]\nurl = "https://x.example/"\n'
        f'secret_files = ["{missing}"]\n'
    )
    argv = ["check-config", "--config", str(config), "--data-dir", str(tmp_path / "d")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{missing}: cannot read the signing secret" in err and "Traceback" not in err
    missing.write_text("whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0" + "\n")
    assert main(argv) == 0
    assert "sinks: hook (http)" in capsys.readouterr().out


@pytest.mark.parametrize("since", ["2h", "90m", "2026-01-01", "1d"])
async def test_replay_since_takes_the_times_journal_grep_takes(
    journal_file: Path, capsys: pytest.CaptureFixture[str], since: str
) -> None:
    """Issue 14: ``journal grep --since 2h`` worked, ``sinks replay --since 2h`` answered
    "'2h' is not a time": one grammar now (every event here arrived just now)."""
    j = ["--journal", str(journal_file)]
    status, out, err = run(capsys, "sinks", "replay", "files", "--since", since, *j)
    assert (status, out) == (0, "sink files: cursor 0; it delivers again from seq 1\n"), err
    assert state(journal_file)["files"] == ("active", 0)
    status, out, err = run(capsys, "journal", "grep", "--since", since, "--format", "jsonl", *j)
    assert status == 0 and len(out.splitlines()) == 4, err  # the same window, the same clock
