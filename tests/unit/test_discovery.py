"""daemon.json is an input like any other: malformed, oversized, another journal's, or
absent, a command says so in one line and changes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.journal.lock import hold_writer_lock
from streamd.ops.discovery import DaemonUnreachable, daemon_file, endpoint, find_daemon


@pytest.fixture
def held(tmp_path: Path) -> Iterator[str]:
    journal = str(tmp_path / "journal.db")
    fd = hold_writer_lock(journal)
    yield journal
    os.close(fd)


def _info(journal: str, **over: object) -> dict[str, object]:
    info: dict[str, object] = {
        "pid": 1, "journal": journal, "journal_id": "abc", "admin_urls": ["http://127.0.0.1:9"],
        "admin_token_file": "/nowhere", "started_at": "2026-12-06T00:00:00.000Z",
    }  # fmt: skip
    info.update(over)
    return info


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "cannot read the daemon file"),
        (b"", "cannot read the daemon file"),
        (b'{"pid": "x"}', "cannot read the daemon file"),
        (b"[" * 70_000, "cannot read the daemon file: too large"),
    ],
    ids=["malformed", "empty", "wrong-types", "oversized"],
)
def test_a_bad_daemon_file_is_one_clear_error(held: str, content: bytes, message: str) -> None:
    Path(daemon_file(held)).write_bytes(content)
    with pytest.raises(DaemonUnreachable, match=message):
        find_daemon(held)


def test_another_journals_daemon_file_is_refused(held: str, tmp_path: Path) -> None:
    other = str(tmp_path / "elsewhere" / "journal.db")
    Path(daemon_file(held)).write_text(json.dumps(_info(other)))
    with pytest.raises(DaemonUnreachable, match="describes the daemon of .*elsewhere"):
        find_daemon(held)


def test_no_daemon_file_or_no_admin_listener_says_what_to_do(held: str) -> None:
    with pytest.raises(DaemonUnreachable, match="give --admin-url, or stop it"):
        endpoint(held, admin_url=None, token_file=None)
    Path(daemon_file(held)).write_text(json.dumps(_info(held, admin_urls=[])))
    with pytest.raises(DaemonUnreachable, match=r"admin listener off \(admin.listen\)"):
        endpoint(held, admin_url=None, token_file=None)
    Path(daemon_file(held)).write_text(json.dumps(_info(held)))
    where = endpoint(held, admin_url=None, token_file=None)
    assert (where.url, where.token_file, where.journal_id) == (
        "http://127.0.0.1:9",
        "/nowhere",
        "abc",
    )
