"""One clock default for every command that takes --since/--until: the receive time.

The mismatch this guards against: ``export``/``grep`` used to window on the event's own
time and ``stats`` on the receive time, so ``export --since 30d`` of events that just
arrived but happened long ago (a pull of last week, Marketo retrying old activities,
``streamd emit`` with old stamps) exported nothing and exited 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamd.cli import main
from streamd.core import EventRecord, key_hash
from streamd.journal import Batch, utc_now
from tests.journals import write_batches

OLD = "2020-01-15T08:00:00.000Z"  # years before "now", whenever the test runs
EVENTS = 5


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Events received just now whose own time is in 2020."""
    path = tmp_path_factory.mktemp("clock") / "journal.db"
    records = [
        EventRecord(
            key=f"old-{i}",
            key_hash=key_hash(f"old-{i}"),
            stream="activity",
            type="com.adobe.platform.marketo.activity.standard.visitwebpage",
            munchkin_id="123-ABC-456",
            activity_type_id=1,
            lead_id=i,
            occurred_at=OLD,
            raw=f'{{"id": "old-{i}", "time": "2020-01-15T08:00:00Z"}}',
        )
        for i in range(EVENTS)
    ]
    assert write_batches(path, [Batch("events", utc_now(), "batch", records)]) == EVENTS
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["journal", *argv])
    out, err = capsys.readouterr()
    assert status == 0, err
    return status, out


@pytest.mark.parametrize("since", ["30d", "2h", "P30D", "-P1D", "PT2H"])
def test_export_grep_and_stats_agree_on_what_arrived_since(
    capsys: pytest.CaptureFixture[str], journal: Path, since: str
) -> None:
    where = ["--journal", str(journal), f"--since={since}"]  # = : "-P1D" is no flag
    _, exported = run(capsys, "export", *where)
    assert [json.loads(line)["event_key"] for line in exported.splitlines()] == [
        f"old-{i}" for i in range(EVENTS)
    ]
    _, counted = run(capsys, "grep", *where, "--count")
    assert json.loads(counted) == {"count": EVENTS}
    _, tailed = run(capsys, "tail", *where, "--format", "jsonl")
    assert len(tailed.splitlines()) == EVENTS
    _, stats = run(capsys, "stats", *where, "--json")
    assert json.loads(stats)["events"] == EVENTS


def test_the_event_time_is_still_there_by_name(
    capsys: pytest.CaptureFixture[str], journal: Path
) -> None:
    where = ["--journal", str(journal), "--clock", "occurred"]
    _, recent = run(capsys, "export", *where, "--since", "30d")
    assert recent == ""
    _, then = run(capsys, "export", *where, "--since", "2020-01-15", "--until", "2020-01-16")
    assert len(then.splitlines()) == EVENTS
    _, stats = run(capsys, "stats", *where, "--since", "30d", "--json")
    assert json.loads(stats)["events"] == 0
