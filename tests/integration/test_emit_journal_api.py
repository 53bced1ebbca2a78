"""The generated Journaling API over real loopback HTTP: paging, 204, 410, limits, seek."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import trio

from streamd.emit.asgi import serve_handler
from streamd.emit.journal_api import PATH, JournalApi, position


@dataclass
class Journal:
    api: JournalApi
    url: str
    client: httpx.AsyncClient
    now: list[float]

    async def get(self, query: str = "", **headers: str) -> httpx.Response:
        return await self.client.get(self.url + PATH + query, headers=headers)


async def _start(nursery: trio.Nursery, **kw: object) -> tuple[JournalApi, str, list[float]]:
    now = [1000.0]
    api = JournalApi(clock=lambda: now[0], **kw)  # type: ignore[arg-type]
    binds: list[str] = await nursery.start(serve_handler, api.handle, "127.0.0.1:0")
    return api, binds[0], now


@pytest.fixture
async def journal() -> AsyncIterator[Journal]:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        api, url, now = await _start(nursery, seed=3, initial=250, expired=10, retry_after=7)
        yield Journal(api, url, client, now)
        nursery.cancel_scope.cancel()


def _next(resp: httpx.Response) -> str:
    match = re.fullmatch(r'<(/journal\?[^>]+)>; rel="next"', resp.headers["link"].split(", ")[0])
    assert match, resp.headers["link"]
    return match.group(1)[len(PATH) :]


async def test_paging_follows_next_links_to_the_end_then_204(journal: Journal) -> None:
    seen: list[str] = []
    ids: set[str] = set()
    resp = await journal.get("?limit=100")
    while resp.status_code == 200:
        doc = resp.json()
        assert doc["_page"] == {"last": doc["events"][-1]["position"], "count": len(doc["events"])}
        seen += [e["position"] for e in doc["events"]]
        ids |= {e["event"]["id"] for e in doc["events"]}
        resp = await journal.get(_next(resp))
    assert seen == [position(i) for i in range(10, 250)]  # from the oldest retained
    assert len(ids) == 240
    assert resp.status_code == 204 and resp.headers["retry-after"] == "7"
    assert 'rel="next"' in resp.headers["link"] and 'rel="validate"' in resp.headers["link"]
    assert _next(resp) == f"?since={position(249)}&limit=100"


async def test_since_is_exclusive_and_events_are_deterministic(journal: Journal) -> None:
    a = (await journal.get(f"?since={position(99)}&limit=3")).json()["events"]
    b = (await journal.get(f"?since={position(99)}&limit=3")).json()["events"]
    assert [e["position"] for e in a] == [position(100), position(101), position(102)]
    assert a == b
    types = {e["event"]["type"] for e in (await journal.get("?limit=240")).json()["events"]}
    assert any(".activity." in t for t in types) and any(".audit." in t for t in types)
    assert any(".notification." in t for t in types)


async def test_the_default_page_is_100_events(journal: Journal) -> None:
    assert len((await journal.get()).json()["events"]) == 100


async def test_new_events_appear_after_a_204_when_the_journal_grows() -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        api, url, now = await _start(nursery, initial=5, rate=2.0)
        j = Journal(api, url, client, now)
        resp = await j.get(f"?since={position(4)}")
        assert resp.status_code == 204
        now[0] += 10.0  # 20 more events
        resp = await j.get(_next(resp))
        assert [e["position"] for e in resp.json()["events"]] == [position(i) for i in range(5, 25)]
        nursery.cancel_scope.cancel()


async def test_an_empty_journal_links_to_its_start_not_to_an_empty_position() -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        api, url, now = await _start(nursery, initial=0, retry_after=1)
        j = Journal(api, url, client, now)
        resp = await j.get("?limit=10")
        assert resp.status_code == 204
        assert resp.headers["link"].split(", ")[0] == '</journal?limit=10>; rel="next"'
        api.initial = 3
        resp = await j.get("?limit=10")
        assert [e["position"] for e in resp.json()["events"]] == [position(i) for i in range(3)]
        nursery.cancel_scope.cancel()


async def test_latest_starts_at_the_end_and_seek_goes_back_in_time(journal: Journal) -> None:
    resp = await journal.get("?latest=true")
    assert resp.status_code == 204
    resp = await journal.get("?seek=-PT30S")  # initial events are one second apart
    assert [e["position"] for e in resp.json()["events"]][:1] == [position(220)]
    resp = await journal.get("?seek=-PT2H")  # further back than the journal: the oldest
    assert resp.json()["events"][0]["position"] == position(10)


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        (f"?since={position(3)}", 410, "older than the retention"),
        ("?since=garbage", 400, "malformed position"),
        (f"?since={position(5000)}", 400, "unknown position"),
        ("?limit=0", 400, "limit must be an integer 1-1000"),
        ("?limit=1001", 400, "limit must be an integer"),
        ("?limit=ten", 400, "limit must be an integer"),
        (f"?since={position(20)}&seek=-PT2H", 400, "cannot be combined"),
        ("?seek=yesterday", 400, "seek must look like"),
        ("?seek=-PT", 400, "seek must look like"),
    ],
)
async def test_bad_or_expired_positions(
    journal: Journal, query: str, status: int, message: str
) -> None:
    resp = await journal.get(query)
    assert resp.status_code == status and message in resp.json()["error"]


async def test_other_paths_and_methods(journal: Journal) -> None:
    assert (await journal.client.get(journal.url + "/nope")).status_code == 404
    resp = await journal.client.post(journal.url + PATH, content=b"{}")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET"


async def test_a_token_is_required_when_configured() -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        api, url, now = await _start(nursery, token="journal-token-0123456789")
        j = Journal(api, url, client, now)
        assert (await j.get()).status_code == 401
        assert (await j.get(authorization="Bearer wrong")).status_code == 401
        ok = await j.get(authorization="Bearer journal-token-0123456789")
        assert ok.status_code == 200
        nursery.cancel_scope.cancel()


async def test_api_key_and_org_id_are_checked_when_configured() -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        api, url, now = await _start(nursery, api_key="client-1", org_id="ORG@AdobeOrg")
        j = Journal(api, url, client, now)
        resp = await j.get(**{"x-api-key": "client-1"})
        assert resp.status_code == 403 and "x-ims-org-id" in resp.json()["error"]
        resp = await j.get(**{"x-api-key": "other", "x-ims-org-id": "ORG@AdobeOrg"})
        assert resp.status_code == 403 and "x-api-key" in resp.json()["error"]
        resp = await j.get(**{"x-api-key": "client-1", "x-ims-org-id": "ORG@AdobeOrg"})
        assert resp.status_code == 200
        nursery.cancel_scope.cancel()
