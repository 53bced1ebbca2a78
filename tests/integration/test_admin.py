"""The admin listener and GET /journal, against a real server on loopback.

The pull client below is written from Adobe's Journaling API documentation
(CONTRACT.md §2): start anywhere, follow the ``next`` link of every answer,
and on 204 wait ``Retry-After`` seconds before asking ``next`` again.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import streamd.admin.journal as journal_api
from streamd.errors import ConfigError
from streamd.service import load_config
from tests.conftest import fixture_bytes
from tests.integration.conftest import Server, StartServer

_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


def admin_url(server: Server) -> str:
    return server.running.admin_binds[0]


def admin_auth(server: Server) -> dict[str, str]:
    token = (server.data_dir / "admin-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def seq_of(position: str) -> int:
    """The ``seq`` of a position ``JOURNAL.SEQ.CHECK`` (docs/admin-api.md)."""
    journal, seq, *_ = position.split(".")
    assert re.fullmatch("[0-9a-f]{8}", journal), position
    return int(seq)


def next_link(response: httpx.Response) -> str:
    match = _NEXT.search(response.headers["link"])
    assert match, response.headers["link"]
    return match.group(1)


async def pull(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    want: int,
    on_wait: Callable[[], None] = lambda: None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Adobe's documented client loop; returns the events and the waits it honoured."""
    events: list[dict[str, Any]] = []
    waits: list[int] = []
    with trio.fail_after(30):
        while len(events) < want:
            response = await client.get(url, headers=headers)
            if response.status_code == 200:
                page = response.json()
                assert page["_page"]["count"] == len(page["events"])
                events.extend(page["events"])
                url = next_link(response)
            elif response.status_code == 204:
                wait = int(response.headers["retry-after"])
                waits.append(wait)
                url = next_link(response)
                on_wait()
                await trio.sleep(wait)
            else:
                raise AssertionError(f"{response.status_code}: {response.text}")
    return events, waits


@pytest.fixture
async def admin(start_server: StartServer) -> Server:
    server: Server = await start_server("[admin]\npull_retry_after = 1\n")
    return server


async def test_the_admin_token_is_generated_and_required(admin: Server) -> None:
    assert any(line.startswith("streamd: generated an admin token") for line in admin.announced)
    assert (admin.data_dir / "admin-token").stat().st_mode & 0o077 == 0
    url = admin_url(admin) + "/journal"
    client = admin.client
    for headers in ({}, admin.auth(), {"Authorization": "Bearer nope-nope-nope-nope"},
                    {"Authorization": admin_auth(admin)["Authorization"].split()[1]}):  # fmt: skip
        response = await client.get(url, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith("Bearer")
    token = admin_auth(admin)["Authorization"].split()[1]
    assert (await client.get(f"{url}?access_token={token}")).status_code == 401
    # ... and an admin token is no API token.
    reply = await admin.post(fixture_bytes("lads_single"), headers=admin_auth(admin))
    assert reply.status_code == 401
    assert (await client.get(url, headers=admin_auth(admin))).status_code == 204


async def test_routes(admin: Server) -> None:
    base, auth = admin_url(admin), admin_auth(admin)
    assert (await admin.client.get(base + "/nope", headers=auth)).status_code == 404
    response = await admin.client.post(base + "/journal", headers=auth)
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert admin.running.admin is not None
    assert admin.running.admin.routes == [
        ("GET", "/healthz"),
        ("GET", "/journal"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("GET", "/sinks"),
        ("POST", "/dlq/drop"),
        ("POST", "/dlq/retry"),
        ("POST", "/pulls/reset"),
        ("POST", "/sinks/disable"),
        ("POST", "/sinks/enable"),
        ("POST", "/sinks/pause"),
        ("POST", "/sinks/replay"),
        ("POST", "/sinks/replay-range"),
        ("POST", "/sinks/resume"),
    ]


async def test_an_adobe_journal_client_reads_everything_once_in_order(admin: Server) -> None:
    for name in ("legacy_push", "lads_single", "lads_batch"):
        assert (await admin.post(fixture_bytes(name))).status_code == 200
    url = admin_url(admin) + "/journal?limit=3"
    late = ["audit_wrapper", "audit_old_wrapper", "notification"]

    async def deliver_later() -> None:
        await admin.wait_for(lambda: pulled_to_the_end.is_set(), "the client reached the end")
        for name in late:
            assert (await admin.post(fixture_bytes(name))).status_code == 200

    pulled_to_the_end = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver_later)
        events, waits = await pull(
            admin.client, url, admin_auth(admin), want=14, on_wait=pulled_to_the_end.set
        )
    positions = [seq_of(e["position"]) for e in events]
    assert positions == list(range(1, 15))
    assert waits and set(waits) == {1}  # honoured the server's Retry-After
    keys = [e["event"].get("marketoGUID") or e["event"].get("id") or e["event"].get("eventid")
            or e["event"].get("event_id") for e in events]  # fmt: skip
    assert len(set(keys)) == 14
    legacy = json.loads(fixture_bytes("legacy_push"))["activities"]
    assert [e["event"] for e in events[:4]] == legacy  # exactly as received


async def test_pages_and_links(admin: Server) -> None:
    assert (await admin.post(fixture_bytes("lads_batch"))).status_code == 200
    base, auth = admin_url(admin), admin_auth(admin)
    response = await admin.client.get(f"{base}/journal?limit=4&stream=activity", headers=auth)
    assert response.status_code == 200
    page = response.json()
    assert seq_of(page["_page"]["last"]) == 4 and page["_page"]["count"] == 4
    assert page["_page"]["last"] == page["events"][-1]["position"]
    assert (
        next_link(response)
        == f"{base}/journal?since={page['_page']['last']}&limit=4&stream=activity"
    )
    response = await admin.client.get(next_link(response), headers=auth)
    page = response.json()
    assert seq_of(page["_page"]["last"]) == 6 and page["_page"]["count"] == 2
    end = page["_page"]["last"]
    response = await admin.client.get(next_link(response), headers=auth)
    assert response.status_code == 204 and response.content == b""
    assert response.headers["retry-after"] == "1"
    assert next_link(response) == f"{base}/journal?since={end}&limit=4&stream=activity"
    latest = await admin.client.get(f"{base}/journal?latest=true", headers=auth)
    assert latest.status_code == 204 and f"since={end}&" in next_link(latest)


async def test_filters(admin: Server) -> None:
    for name in ("legacy_push", "lads_single", "lads_batch", "audit_wrapper"):
        assert (await admin.post(fixture_bytes(name))).status_code == 200
    base, auth = admin_url(admin), admin_auth(admin)

    async def positions(query: str) -> list[int]:
        response = await admin.client.get(f"{base}/journal?{query}", headers=auth)
        assert response.status_code == 200, response.text
        return [seq_of(e["position"]) for e in response.json()["events"]]

    assert await positions("lead=4412") == [2]
    assert await positions("activity_type=Open+Email") == [5, 6]
    assert await positions("where=data.primaryAttributeValue%3DSpring*&limit=2") == [5, 6]
    assert await positions("stream=audit") == [12]
    # from/until apply to the receive time unless clock=occurred says otherwise.
    assert await positions("type=*.openemail&from=1h") == [5, 6]
    assert await positions("type=*.openemail&from=2026-05-02&until=2026-05-03") == []
    occurred = "type=*.openemail&from=2026-05-02&until=2026-05-03&clock=occurred"
    assert await positions(occurred) == [5, 6]


async def test_a_rare_filter_scans_a_bounded_window(
    admin: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_api, "SCAN_WINDOW", 5)
    for name in ("legacy_push", "lads_single", "lads_batch"):
        assert (await admin.post(fixture_bytes(name))).status_code == 200
    url = admin_url(admin) + "/journal?lead=2099"
    seen = []
    for _ in range(3):
        response = await admin.client.get(url, headers=admin_auth(admin))
        assert response.status_code == 200
        page = response.json()
        last, count = seq_of(page["_page"]["last"]), page["_page"]["count"]
        seen.append((last, count, [seq_of(e["position"]) for e in page["events"]]))
        assert f"since={page['_page']['last']}&" in next_link(response)
        url = next_link(response)
    assert seen == [(5, 0, []), (10, 0, []), (11, 1, [11])]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=-1", "since: '-1' is not a position: expected JOURNAL.SEQ.CHECK"),
        ("since=abc", "since: 'abc' is not a position: expected JOURNAL.SEQ.CHECK"),
        ("since=99999999999999999999", "since: "),
        ("limit=0", "limit: expected 1 to 1000"),
        ("limit=1001", "limit: expected 1 to 1000"),
        ("since=1&since=2", "since given more than once"),
        ("since=1&latest=true", "since and latest=true cannot be combined"),
        ("latest=maybe", "latest: expected true or false"),
        ("seek=-PT", "seek: '-PT' is not a duration or a time: expected a duration back"),
        ("seek=-P2X", "seek: '-P2X' is not a duration or a time"),
        ("seek=yesterday", "seek: 'yesterday' is not a duration or a time"),
        ("seek=2026-13-01", "seek: '2026-13-01' is not a valid time"),
        ("seek=-PT2H&since=3", "seek cannot be combined with since or latest=true"),
        ("color=red", "unknown parameter 'color'"),
        ("lead=1%20OR%201%3D1", "lead: '1 OR 1=1' is not a whole number"),
        ("from=yesterday", "from: 'yesterday' is not a duration or a time"),
        ("where=x'%3B--", 'where: "x\';--" is not PATH=VALUE'),
        ("activity_type=Nope", "activity_type: 'Nope' is neither an id"),
        ("&".join(f"a{i}=1" for i in range(60)), "more than 50 parameters"),
    ],
)
async def test_hostile_parameters_get_400(admin: Server, query: str, message: str) -> None:
    response = await admin.client.get(
        f"{admin_url(admin)}/journal?{query}", headers=admin_auth(admin)
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize("admin_toml", ["enabled = false", "listen = []"])
async def test_the_listener_can_be_off(
    start_server: StartServer, data_dir: Path, admin_toml: str
) -> None:
    server = await start_server(f"[admin]\n{admin_toml}\n")
    assert server.running.admin_binds == [] and server.running.admin is None
    assert not (data_dir / "admin-token").exists()


@pytest.mark.parametrize(
    ("toml", "flags", "message"),
    [
        ('[admin]\nlisten = "nope"\n', {}, "key admin.listen: 'nope' is not HOST:PORT"),
        ('[admin]\nlisten = ["127.0.0.1:1", "x:y"]\n', {}, "key admin.listen[1]: 'x:y': port"),
        ('[server]\nlisten = ["127.0.0.1:9000"]\n[admin]\nlisten = "127.0.0.1:9000"\n', {},
         "127.0.0.1:9000 overlaps 127.0.0.1:9000 (key server.listen[0])"),
        ("[admin]\npull_retry_after = 0\n", {}, "key admin.pull_retry_after"),
        ("[admin]\nlisten = 8081\n", {}, "key admin.listen"),
        ("", {"admin_listen": ["localhost"]}, "--admin-listen: 'localhost' is not HOST:PORT"),
    ],
)  # fmt: skip
def test_admin_config_errors(
    tmp_path: Path, toml: str, flags: dict[str, Any], message: str
) -> None:
    path = tmp_path / "streamd.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(path), **flags)


async def test_a_position_older_than_retention_is_410(admin: Server) -> None:
    for name in ("legacy_push", "lads_batch"):  # seq 1..10
        assert (await admin.post(fixture_bytes(name))).status_code == 200
    conn = sqlite3.connect(admin.journal, timeout=10)
    with conn:
        conn.execute("DELETE FROM events WHERE seq <= 4")  # what retention does
    conn.close()
    base, auth = admin_url(admin), admin_auth(admin)
    gone = await admin.client.get(base + "/journal?since=2", headers=auth)
    assert gone.status_code == 410
    assert gone.json()["error"] == (
        "position 2 is older than the oldest event kept (seq 5; retention deleted the "
        "events after it); start again without since (from the oldest event kept) or "
        "with latest=true"
    )
    ok = await admin.client.get(base + "/journal?since=4", headers=auth)
    assert ok.status_code == 200
    assert seq_of(ok.json()["events"][0]["position"]) == 5
    # The position of a deleted event, where retention cut, still continues.
    again = await admin.client.get(base + "/journal", headers=auth)
    cut = again.json()["events"][0]["position"].split(".")[0] + ".4"
    ok = await admin.client.get(base + f"/journal?since={cut}", headers=auth)
    assert ok.status_code == 200 and seq_of(ok.json()["events"][0]["position"]) == 5
    gone = await admin.client.get(base + f"/journal?since={cut[:-1]}3", headers=auth)
    assert gone.status_code == 410 and "older than the oldest" in gone.json()["error"]
    assert (await admin.client.get(base + "/journal", headers=auth)).status_code == 200


async def test_seek_goes_back_in_time_like_adobes_journal(admin: Server) -> None:
    for name in ("legacy_push", "lads_batch"):  # received now: seq 1..10
        assert (await admin.post(fixture_bytes(name))).status_code == 200
    base, auth = admin_url(admin), admin_auth(admin)
    back = await admin.client.get(base + "/journal?seek=-PT2H&limit=100", headers=auth)
    assert back.status_code == 200
    assert [seq_of(e["position"]) for e in back.json()["events"]] == list(range(1, 11))
    # Back by nothing: the end of the journal, 204 and a next link from there.
    now = await admin.client.get(base + "/journal?seek=-PT0S", headers=auth)
    assert now.status_code == 204
    assert "since=" + back.json()["_page"]["last"] + "&" in now.headers["link"]
    day = await admin.client.get(base + "/journal?seek=-P1DT30M&limit=3", headers=auth)
    assert [seq_of(e["position"]) for e in day.json()["events"]] == [1, 2, 3]
    # The one time grammar: unsigned ISO durations, short durations, times.
    for seek in ("PT2H", "2h", "30d", "2026-01-01", "2026-01-01T00:00:00Z"):
        back = await admin.client.get(base + f"/journal?seek={seek}&limit=1", headers=auth)
        assert [seq_of(e["position"]) for e in back.json()["events"]] == [1], seek
    future = await admin.client.get(base + "/journal?seek=2999-01-01", headers=auth)
    assert future.status_code == 204
