"""``streamd emit`` and ``streamd emit verify`` on bad input: precise messages, right exit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streamd.cli import main

GOOD = ["a1b2c3d4-0000-4000-8000-000000000001", "a1b2c3d4-0000-4000-8000-000000000002"]


def _journal(path: Path, keys: list[str]) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, event_key TEXT NOT NULL)")
    conn.executemany("INSERT INTO events (event_key) VALUES (?)", [(k,) for k in keys])
    conn.commit()
    conn.close()
    return path


def _acked(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _verify(capsys: pytest.CaptureFixture[str], journal: Path, acked: Path) -> tuple[int, str]:
    status = main(["emit", "verify", "--journal", str(journal), "--acked", str(acked)])
    out = capsys.readouterr()
    return status, out.out + out.err


def test_verify_passes_when_every_acked_id_is_there_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = _journal(tmp_path / "j.db", [*GOOD, "other-event"])
    before = journal.read_bytes()
    status, out = _verify(capsys, journal, _acked(tmp_path / "a", "\n".join(GOOD) + "\n"))
    assert status == 0 and out.startswith("ok: all 2 acknowledged ids") and "3 events" in out
    assert journal.read_bytes() == before  # read-only
    assert not (tmp_path / "j.db-wal").exists()


def test_verify_names_missing_and_duplicated_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = _journal(tmp_path / "j.db", [GOOD[0], GOOD[0]])
    status, out = _verify(capsys, journal, _acked(tmp_path / "a", "\n".join(GOOD) + "\n"))
    assert status == 1
    assert f"MISSING: 1 of 2 acknowledged ids are not in the journal, e.g. {GOOD[1]}" in out
    assert f"DUPLICATED: 1 acknowledged ids are journaled more than once, e.g. {GOOD[0]} x2" in out


def test_verify_skips_an_unterminated_last_line_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = _journal(tmp_path / "j.db", [GOOD[0]])
    status, out = _verify(capsys, journal, _acked(tmp_path / "a", f"{GOOD[0]}\n{GOOD[1][:9]}"))
    assert status == 0
    assert "last line is not terminated" in out and "ok: all 1 acknowledged ids" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"{GOOD[0]}\nnot an id\n", "line 2: not an event id: 'not an id'"),
        (f"{GOOD[0]}\n\n", "line 2: not an event id: ''"),
        (b"\xff\xfe\n", "line 1: not an event id (non-ASCII bytes)"),
        ("x" * 300 + "\n", "line 1: not an event id: 'xxxxxxxx"),
    ],
)
def test_verify_refuses_a_garbled_acked_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, message: str
) -> None:
    journal = _journal(tmp_path / "j.db", GOOD)
    status, out = _verify(capsys, journal, _acked(tmp_path / "a", content))
    assert status == 2 and message in out and "Traceback" not in out


def test_verify_refuses_missing_or_wrong_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acked = _acked(tmp_path / "a", GOOD[0] + "\n")
    journal = _journal(tmp_path / "j.db", GOOD)
    text = tmp_path / "text.db"
    text.write_text("this is not sqlite at all, just some text" * 100)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.close()
    cases = [
        (journal, tmp_path / "nope", "--acked " + str(tmp_path / "nope") + ": no such file"),
        (journal, tmp_path, "is a directory"),
        (tmp_path / "nope.db", acked, "no such file"),
        (tmp_path, acked, "is a directory (the file is journal.db in it)"),
        (text, acked, "not a readable SQLite journal"),
        (tmp_path / "other.db", acked, "not a streamd journal (no events table)"),
    ]
    for j, a, message in cases:
        status, out = _verify(capsys, j, a)
        assert (status, message in out) == (2, True), (j, a, out)
        assert "Traceback" not in out


def test_verify_requires_both_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["emit", "verify", "--journal", "x"])
    assert exc.value.code == 2
    assert "--acked" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--to URL is required"),
        (["--to", "http://h/e", "--mode", "io", "--batch", "21"], "at most 20 events"),
        (["--to", "http://h/e", "--batch", "20000"], "--batch must be at most 10000"),
        (["--to", "http://h/e", "--seed", "70000"], "--seed must be in 0-65535"),
        (["--to", "http://h/e", "--drain", "-1"], "--drain must be 0 or more"),
        (["--to", "http://h/e", "--parallel", "5000"], "--parallel must be at most 1024"),
        (["--to", "http://h/e", "--oauth-url", "http://idp/t"], "OAuth needs all of"),
        (["--to", "http://h/e", "--token-file", "/nonexistent/tok"], "--token-file: "),
        (["--to", "http://h/e", "--acked", "/"], "--acked /: cannot append"),
        (["--to", "http://h/e", "--id-fields", "both"], "--id-fields is an Adobe I/O Events"),
    ],
)
def test_emit_usage_errors_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status = main(["emit", *argv])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err


def test_oauth_in_io_mode_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-long-enough-secret\n")
    argv = ["emit", "--to", "http://h/e", "--mode", "io", "--oauth-url", "http://i/t"]
    status = main([*argv, "--client-id", "c", "--client-secret-file", str(secret)])
    assert status == 2 and "legacy push feature" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to", "ftp://h/e"], "expected an http:// or https:// URL"),
        (["--to", "http://h:99999/e"], "bad port"),
        (["--to", "http://h/e", "--rate", "-5"], "--rate must be positive"),
        (["--to", "http://h/e", "--rate", "nan"], "--rate must be positive"),
        (["--to", "http://h/e", "--count", "x"], "--count must be a number"),
        (["--to", "http://h/e", "--duplicates", "1.5"], "between 0 and 1"),
        (["--to", "http://h/e", "--time-scale", "0"], "--time-scale must be positive"),
        (["--to", "http://h/e", "--count", "5", "--duration", "5"], "not allowed with"),
        (["--to", "http://h/e", "--rate", "5", "--unpaced"], "not allowed with"),
        (["--to", "http://h/e", "--mode", "io", "--id-fields", "old"], "invalid choice: 'old'"),
    ],
)
def test_emit_bad_flag_values_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["emit", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_journal_server_refuses_more_expired_than_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["emit", "--journal-server", "--journal-events", "5", "--journal-expired", "6"])
    assert status == 2 and "cannot exceed" in capsys.readouterr().err
    status = main(["emit", "--journal-server", "--journal-events", "-1"])
    assert status == 2 and "must not be negative" in capsys.readouterr().err


def test_every_emit_flag_has_help_and_is_in_the_cli_reference() -> None:
    import argparse

    from streamd.cli import build_parser

    cli = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    rows = "\n".join(line for line in cli.splitlines() if line.startswith("| "))
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    emit = sub.choices["emit"]
    flags = [a for a in emit._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 20
    for action in flags:
        assert action.help, f"streamd emit {action.option_strings[0]} has no help"
        # A row of docs/cli.md's tables of emit flags (or the commands'), not just a mention.
        assert f"`{action.option_strings[0]}" in rows, action.option_strings[0]


def test_hmac_secret_is_an_io_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-long-enough-secret\n")
    status = main(["emit", "--to", "http://h/e", "--hmac-secret-file", str(secret)])
    assert status == 2 and "--mode io" in capsys.readouterr().err


def test_one_usage_error_for_streamd_and_its_emulator() -> None:
    """The emulator's UsageError is streamd's: both CLIs report it alike (exit 2)."""
    from streamd import errors
    from streamd.emit import errors as emit_errors
    from streamd.emit.errors import UsageError

    assert UsageError is emit_errors.UsageError is errors.UsageError
    assert UsageError.status_hint == 400


def test_a_usage_error_from_below_the_emulator_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token file streamd's own reader refuses: exit 2, one line, no traceback."""
    token = tmp_path / "token"
    token.write_text("short\n")
    status = main(
        ["emit", "--to", "http://127.0.0.1:9/events", "--token-file", str(token), "--count", "1"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("streamd emit: --token-file: ") and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "choice"),
    [([], "auto"), (["--id-fields", "both"], "both"), (["--id-fields", "new"], "new")],
)
def test_id_fields_follow_the_date_unless_chosen(flags: list[str], choice: str) -> None:
    from streamd.cli import build_parser
    from streamd.cli.emit import options_from

    args = build_parser().parse_args(["emit", "--to", "http://h/e", "--mode", "io", *flags])
    assert options_from(args).id_fields == choice
