"""GET /journal never skips silently: positions carry the journal and the event.

A client keeps the position it read last. When the journal behind the admin listener
is restored from an older backup, or replaced by a new one, continuing from that
position would skip events without a word (a 204 for ever, or a 200 that starts past
events the client never saw). These tests run the real daemon over loopback, stop it,
restore or replace its journal as docs/journal.md says, start it again with the same
configuration, and ask with the position the client kept: a 410 that says what to do.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from streamd.cli import main
from streamd.emit.generate import iter_batches
from streamd.service import serve
from tests.conftest import fixture_bytes
from tests.integration.conftest import TOKEN, Server, make_config
from tests.integration.test_admin import admin_auth, admin_url, next_link, seq_of

_TOML = "[admin]\npull_retry_after = 1\n"
_RESTART = "start again without since (from the oldest event kept) or with latest=true"


@asynccontextmanager
async def daemon(data_dir: Path, client: httpx.AsyncClient) -> AsyncIterator[Server]:
    """The real service on ``data_dir`` (the same configuration each time), stopped at exit."""
    announced: list[str] = []
    async with trio.open_nursery() as nursery:
        running = await nursery.start(
            partial(serve, make_config(data_dir, _TOML), announce=announced.append)
        )
        yield Server(running.binds[0], TOKEN, data_dir, client, announced, running)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


async def post_new_events(server: Server, count: int, seed: int) -> None:
    """``count`` events never seen before (legacy push batches of 4)."""
    batches = iter_batches("legacy", 4, seed=seed, worker=0)
    for _ in range(count // 4):
        reply = await server.post(next(batches))
        assert reply.status_code == 200, reply.text


async def read_all(server: Server) -> tuple[list[dict[str, Any]], str]:
    """Adobe's client loop to the end: the events, and the ``next`` link of the 204."""
    url = admin_url(server) + "/journal?limit=3"
    events: list[dict[str, Any]] = []
    with trio.fail_after(30):
        while True:
            response = await server.client.get(url, headers=admin_auth(server))
            if response.status_code == 204:
                return events, next_link(response)
            assert response.status_code == 200, response.text
            events.extend(response.json()["events"])
            url = next_link(response)


def with_base(link: str, server: Server) -> str:
    """The same request on ``server``'s admin listener (a new start binds a new port)."""
    return admin_url(server) + link[link.index("/journal") :]


async def gone(server: Server, link: str) -> str:
    """Ask ``link`` on ``server``: it must be a 410; its message."""
    response = await server.client.get(with_base(link, server), headers=admin_auth(server))
    assert response.status_code == 410, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    message: str = response.json()["error"]
    assert message.endswith(_RESTART), message
    return message


def remove_journal(data_dir: Path) -> None:
    for name in ("journal.db", "journal.db-wal", "journal.db-shm", "journal.dedup.db"):
        (data_dir / name).unlink(missing_ok=True)


async def test_a_journal_restored_from_an_older_backup_answers_410_not_204_for_ever(
    data_dir: Path, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.db"
    async with daemon(data_dir, client) as server:
        assert (await server.post(fixture_bytes("legacy_push"))).status_code == 200  # 1..4
        status = await trio.to_thread.run_sync(
            main, ["journal", "backup", "--data-dir", str(data_dir), str(backup)]
        )
        assert status == 0
        assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200  # 5..10
        events, end = await read_all(server)
        assert [seq_of(e["position"]) for e in events] == list(range(1, 11))
        middle = events[6]["position"]  # seq 7, a position a client may have saved

    # Restored as docs/journal.md says: the copy in place, the WAL and dedup index gone.
    remove_journal(data_dir)
    shutil.copyfile(backup, data_dir / "journal.db")
    async with daemon(data_dir, client) as server:
        message = await gone(server, end)
        assert message.startswith(f"position {seq_of_text(end)} is beyond the newest event ")
        assert "(seq 4): the journal was restored from an older backup or replaced" in message
        # Other events take seq 5.. of the restored journal. Today's answer to the kept
        # position would be a 200 starting after them: the client would never see them.
        await post_new_events(server, 12, seed=41)  # 5..16
        for kept in (end, f"/journal?since={middle}"):
            message = await gone(server, kept)
            assert "names an event this journal does not hold at seq" in message
        # What the message says works: from the oldest, every event of this journal.
        fresh, _ = await read_all(server)
        assert [seq_of(e["position"]) for e in fresh] == list(range(1, 17))
        assert [e["event"] for e in fresh[:4]] == [e["event"] for e in events[:4]]
        assert fresh[:4] == events[:4]  # the same events at the same positions go on


def seq_of_text(link: str) -> str:
    """The ``since`` of a next link, as it was given."""
    return link.split("since=")[1].split("&")[0]


async def test_a_replaced_journal_answers_410_for_the_old_journals_positions(
    data_dir: Path, client: httpx.AsyncClient
) -> None:
    async with daemon(data_dir, client) as server:
        assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200  # 1..6
        events, end = await read_all(server)
        old_id = events[0]["position"].split(".")[0]

    remove_journal(data_dir)  # a new journal, the same configuration
    async with daemon(data_dir, client) as server:
        for round_ in range(2):
            message = await gone(server, end)
            assert message.startswith(
                f"position {seq_of_text(end)} was given by another journal ({old_id}), not "
                "this one ("
            )
            assert "the journal was replaced, so nothing here continues it" in message
            await post_new_events(server, 8, seed=42 + round_)  # past the old position's seq
        fresh, _ = await read_all(server)
        assert [seq_of(e["position"]) for e in fresh] == list(range(1, 17))
        assert fresh[0]["position"].split(".")[0] != old_id
        # An empty journal, too, answers with positions that name it.
        latest = await client.get(
            admin_url(server) + "/journal?latest=true", headers=admin_auth(server)
        )
        assert latest.status_code == 204
        assert f"since={fresh[-1]['position']}&" in next_link(latest)


async def test_a_position_beyond_the_newest_event_is_410(
    data_dir: Path, client: httpx.AsyncClient
) -> None:
    async with daemon(data_dir, client) as server:
        assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200  # 1..6
        events, _ = await read_all(server)
        journal = events[0]["position"].split(".")[0]
        check = events[5]["position"].split(".")[2]
        for since in ("7", "99", f"{journal}.7.{check}", f"{journal}.9223372036854775807"):
            message = await gone(server, f"/journal?since={since}")
            assert message.startswith(
                f"position {since} is beyond the newest event of this journal (seq 6): "
            ), message
        # A kept position whose check does not match the event at its seq.
        wrong = f"{journal}.6.{'0' * 8 if check != '0' * 8 else '1' * 8}"
        message = await gone(server, f"/journal?since={wrong}")
        assert message.startswith(f"position {wrong} names an event this journal does not")
        # A position given where no event was (the start's form) at a seq that has one.
        message = await gone(server, f"/journal?since={journal}.3")
        assert "names an event this journal does not hold at seq 3" in message


async def test_a_bare_position_of_an_earlier_streamd_continues_in_the_new_form(
    data_dir: Path, client: httpx.AsyncClient
) -> None:
    async with daemon(data_dir, client) as server:
        assert (await server.post(fixture_bytes("lads_batch"))).status_code == 200  # 1..6
        events, _ = await read_all(server)
        assert [seq_of(e["position"]) for e in events] == list(range(1, 7))  # the new form
        url = admin_url(server) + "/journal?since=4&limit=10"
        response = await client.get(url, headers=admin_auth(server))
        assert response.status_code == 200
        assert [e["position"] for e in response.json()["events"]] == [
            e["position"] for e in events[4:]
        ]
        assert f"since={events[-1]['position']}&" in next_link(response)
        at_end = await client.get(
            admin_url(server) + "/journal?since=6", headers=admin_auth(server)
        )
        assert at_end.status_code == 204
        assert f"since={events[-1]['position']}&" in next_link(at_end)


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("a" * 5000, "since: a position is at most 64 characters, this one has 5000"),
        ("5d1c09a2.1." + "f" * 60, "since: a position is at most 64 characters, this one has 71"),
        ("%C3%A9", "since: 'é' is not a position: positions are ASCII digits"),
        ("%EF%BC%91", "since: '\uff11' is not a position: positions are ASCII digits"),
        ("5d1c09a2.1%00", "since: '5d1c09a2.1\\x00' is not a position: positions are ASCII"),
        ("-1", "since: '-1' is not a position: expected JOURNAL.SEQ.CHECK"),
        ("5d1c09a2.-1.9b0c77d1", "since: '5d1c09a2.-1.9b0c77d1' is not a position: expected"),
        ("", "since: '' is not a position: expected JOURNAL.SEQ.CHECK"),
        ("5D1C09A2.1.9B0C77D1", "since: '5D1C09A2.1.9B0C77D1' is not a position: expected"),
        ("5d1c09a2.1.9b0c77d1.0", "since: '5d1c09a2.1.9b0c77d1.0' is not a position"),
        ("5d1c09a2..9b0c77d1", "since: '5d1c09a2..9b0c77d1' is not a position"),
        ("5d1c09.1.9b0c77d1", "since: '5d1c09.1.9b0c77d1' is not a position"),
        ("1+OR+1%3D1", "since: '1 OR 1=1' is not a position"),
        ("9223372036854775808", "since: '9223372036854775808': the sequence number is larger "
         "than 9223372036854775807"),
        ("5d1c09a2.99999999999999999999.9b0c77d1",
         "since: '5d1c09a2.99999999999999999999.9b0c77d1': the sequence number is larger"),
        ("5d1c09a2.0.9b0c77d1", "since: '5d1c09a2.0.9b0c77d1': the start of a journal (0) "
         "carries no check"),
    ],
)  # fmt: skip
async def test_malformed_positions_get_400_with_the_reason(
    data_dir: Path, client: httpx.AsyncClient, since: str, message: str
) -> None:
    async with daemon(data_dir, client) as server:
        assert (await server.post(fixture_bytes("lads_single"))).status_code == 200
        response = await client.get(
            f"{admin_url(server)}/journal?since={since}", headers=admin_auth(server)
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith(message), response.json()
