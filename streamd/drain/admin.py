"""The drain's operator operations on the admin listener.

``GET /sinks`` reads; every change is a ``POST`` with a small JSON body,
decoded into a strict msgspec Struct (unknown fields and wrong types are a
400 naming the field). The same operations as ``streamd sinks`` and
``streamd dlq``, which use these routes while a daemon runs.

| route | body | answer |
|---|---|---|
| ``GET /sinks`` | | ``[{name, kind, state, cursor, lag_events, lag_seconds, ...}]`` |
| ``POST /sinks/pause`` (``resume``, ``disable``, ``enable``) | ``{"name"}`` | the sink's row |
| ``POST /sinks/replay`` | ``{"name", "from_seq"}`` or ``{"name", "since"}`` | the row |
| ``POST /sinks/replay-range`` | ``{"name", "from_seq", "to_seq", "streams", "types"}`` | |
| ``POST /dlq/retry`` (``drop``) | ``{"sink", "ids": [...]}`` or ``{"sink", "all": true}`` | |

(the dead-letter routes answer ``{"count"}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from streamd.admin.app import Request, Response, Route
from streamd.drain.engine import Drain, DrainError
from streamd.drain.offline import parse_time
from streamd.drain.store import SinkRow
from streamd.errors import UsageError

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Meta4 = msgspec.Meta(max_length=4)
Meta64 = msgspec.Meta(max_length=64)


class SinkRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name


class ReplayRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    from_seq: Annotated[int, msgspec.Meta(ge=1)] | None = None
    since: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class ReplayRangeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    from_seq: Annotated[int, msgspec.Meta(ge=1)]
    to_seq: Annotated[int, msgspec.Meta(ge=1)]
    streams: Annotated[list[Literal["activity", "audit", "notification", "other"]], Meta4] = (
        msgspec.field(default_factory=list)
    )
    types: Annotated[list[Annotated[str, msgspec.Meta(max_length=256)]], Meta64] = msgspec.field(
        default_factory=list
    )


class DeadLettersRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sink: Name
    ids: Annotated[list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(max_length=10_000)] = (
        msgspec.field(default_factory=list)
    )
    all: bool = False


T = TypeVar("T")


def _decode(request: Request, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(request.body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise UsageError(f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise UsageError(f"body: not valid JSON: {exc}") from None


def _row(row: SinkRow) -> dict[str, Any]:
    return dataclasses.asdict(row)


def sink_routes(drain: Drain) -> list[Route]:
    """The admin routes of ``drain``."""

    async def list_sinks(request: Request) -> Response:
        return Response(200, [dataclasses.asdict(s) for s in await drain.sinks()])

    def change(op: Callable[[str], Awaitable[SinkRow]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            body = _decode(request, SinkRequest)
            return Response(200, _row(await op(body.name)))

        return handler

    async def replay(request: Request) -> Response:
        body = _decode(request, ReplayRequest)
        if (body.from_seq is None) == (body.since is None):
            raise UsageError("body: give exactly one of from_seq and since")
        since = None if body.since is None else parse_time(body.since)  # DrainError: 400
        row = await drain.replay(body.name, seq=body.from_seq, received_at=since)
        return Response(200, _row(row))

    async def replay_range(request: Request) -> Response:
        body = _decode(request, ReplayRangeRequest)
        if body.to_seq < body.from_seq:
            raise UsageError("body: to_seq must be at or above from_seq")
        count = await drain.replay_range(
            body.name, body.from_seq, body.to_seq, streams=body.streams, types=body.types
        )
        return Response(200, {"count": count})

    def dead_letters(
        op: Callable[[str, list[int] | None], Awaitable[int]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            body = _decode(request, DeadLettersRequest)
            if body.all == bool(body.ids):
                raise UsageError("body: give dead letter ids or all: true")
            count = await op(body.sink, None if body.all else list(body.ids))
            return Response(200, {"count": count})

        return handler

    return [
        Route("GET", "/sinks", list_sinks),
        Route("POST", "/sinks/pause", change(drain.pause)),
        Route("POST", "/sinks/resume", change(drain.resume)),
        Route("POST", "/sinks/disable", change(drain.disable)),
        Route("POST", "/sinks/enable", change(drain.enable)),
        Route("POST", "/sinks/replay", replay),
        Route("POST", "/sinks/replay-range", replay_range),
        Route("POST", "/dlq/retry", dead_letters(drain.retry_dead_letters)),
        Route("POST", "/dlq/drop", dead_letters(drain.drop_dead_letters)),
    ]


__all__ = ["DrainError", "sink_routes"]
