"""The shared ASGI pieces: the bounded body read and the lifespan answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from streamd.asgi import ClientGone, lifespan, read_body


def _receiver(messages: list[dict[str, Any]]) -> Any:
    queue = list(messages)

    async def receive() -> Mapping[str, Any]:
        return queue.pop(0)

    return receive


def _chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]


async def test_the_body_in_pieces_is_joined() -> None:
    assert await read_body(_receiver(_chunks(b"ab", b"", b"cd")), 4) == b"abcd"


async def test_past_the_limit_is_none_and_the_rest_is_not_read() -> None:
    receive = _receiver([*_chunks(b"abc", b"de"), {"type": "never read"}])
    assert await read_body(receive, 4) is None


async def test_a_disconnect_before_the_end_raises() -> None:
    receive = _receiver([{"type": "http.request", "body": b"a", "more_body": True},
                         {"type": "http.disconnect"}])  # fmt: skip
    with pytest.raises(ClientGone):
        await read_body(receive, 100)


async def test_lifespan_answers_startup_and_shutdown() -> None:
    sent: list[Mapping[str, Any]] = []

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(message)

    receive = _receiver([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    await lifespan(receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
