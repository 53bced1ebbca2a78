"""Client-credentials tokens for the pull source, against a token endpoint on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import trio

from streamd.auth.ims import ClientCredentials, TokenUnavailable
from streamd.emit.asgi import Reply, Request, serve_handler
from streamd.emit.journal_api import IMS_PATH, JournalApi

SECRET = "ims-secret-0123456789abcdef"


@pytest.fixture
async def ims() -> AsyncIterator[tuple[JournalApi, str, list[Reply]]]:
    api = JournalApi(api_key="client", client_secret=SECRET, token_lifetime=600)
    canned: list[Reply] = []  # answers to give instead, first in first out

    async def handle(request: Request) -> Reply:
        if canned:
            return canned.pop(0)
        return await api.handle(request)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve_handler, handle, "127.0.0.1:0")
        yield api, binds[0] + IMS_PATH, canned
        nursery.cancel_scope.cancel()


async def test_a_token_is_fetched_once_and_renewed_before_it_expires(
    ims: tuple[JournalApi, str, list[Reply]],
) -> None:
    api, url, _ = ims
    now = [0.0]
    tokens = ClientCredentials(url, "client", SECRET, "AdobeID", clock=lambda: now[0])
    first = await tokens.token()
    assert first in api.issued
    assert await tokens.token() == first and api.token_requests == 1
    now[0] = 539.0  # 90% of 600 s not reached: still the same
    assert await tokens.token() == first
    now[0] = 541.0
    second = await tokens.token()
    assert second != first and api.token_requests == 2
    tokens.invalidate(first)  # a stale refusal does not drop the new token
    assert await tokens.token() == second
    tokens.invalidate(second)
    assert await tokens.token() not in (first, second)


async def test_a_wrong_secret_is_refused_and_not_repeated_in_the_error(
    ims: tuple[JournalApi, str, list[Reply]],
) -> None:
    _, url, _ = ims
    tokens = ClientCredentials(url, "client", "wrong-secret-value", "AdobeID")
    with pytest.raises(TokenUnavailable) as info:
        await tokens.token()
    assert info.value.refused
    assert "answered 401: invalid_client" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)


@pytest.mark.parametrize(
    ("reply", "message", "refused"),
    [
        (Reply(503, b"busy"), "answered 503", False),
        (Reply(429, b"{}"), "answered 429", False),
        (
            Reply(400, b'{"error":"invalid_scope","error_description":"no"}'),
            "invalid_scope - no",
            True,
        ),
        (Reply(200, b"<html>"), "not a JSON object", False),
        (Reply(200, b"[1]"), "not a JSON object", False),
        (Reply(200, b'{"token_type":"bearer"}'), "no usable access_token", False),
        (Reply(200, b'{"access_token":"a b"}'), "no usable access_token", False),
        (Reply(200, b'{"access_token":"t","expires_in":-5}'), "expires_in", False),
        (Reply(200, b'{"access_token":"t","expires_in":true}'), "expires_in", False),
        (Reply(200, b'{"access_token":"t","expires_in":"x"}'), "expires_in", False),
        (Reply(200, b'{"access_token":"' + b"t" * 70_000 + b'"}'), "not a JSON object", False),
    ],
)
async def test_bad_answers_are_named(
    ims: tuple[JournalApi, str, list[Reply]], reply: Reply, message: str, refused: bool
) -> None:
    _, url, canned = ims
    canned.append(reply)
    with pytest.raises(TokenUnavailable, match=message) as info:
        await ClientCredentials(url, "client", SECRET, "AdobeID").token()
    assert info.value.refused is refused


async def test_milliseconds_and_strings_in_expires_in(
    ims: tuple[JournalApi, str, list[Reply]],
) -> None:
    _, url, canned = ims
    now = [0.0]
    tokens = ClientCredentials(url, "client", SECRET, "AdobeID", clock=lambda: now[0])
    # IMS v2 answered milliseconds: 86,399,000 ms is a day, not 2.7 years.
    canned.append(Reply(200, orjson.dumps({"access_token": "a", "expires_in": 86_399_000})))
    assert await tokens.token() == "a"
    now[0] = 86_399 * 0.9 + 1
    canned.append(Reply(200, orjson.dumps({"access_token": "b", "expires_in": "120"})))
    assert await tokens.token() == "b"  # renewed after 90% of a day
    now[0] += 61  # 120 s lifetime: renewed a minute early
    canned.append(Reply(200, orjson.dumps({"access_token": "c"})))
    assert await tokens.token() == "c"


async def test_an_unreachable_endpoint_is_not_a_refusal() -> None:
    tokens = ClientCredentials("http://127.0.0.1:9/token", "client", SECRET, "x", timeout=2)
    with pytest.raises(TokenUnavailable, match="ConnectError") as info:
        await tokens.token()
    assert not info.value.refused
