"""The operator's actions on the admin listener: one ``POST`` route per operation.

Each body is decoded straight into its :class:`~streamd.ops.Operation` (a strict
msgspec Struct: unknown fields and wrong types are a 400 naming the field) and
run by the part of the daemon it concerns: the drain for sinks and dead letters,
the pulls for a pull reset. ``GET /sinks`` reads the sinks' live state.

- ``GET /sinks``: ``[{name, kind, state, cursor, lag_events, lag_seconds, ...}]``
- ``POST /sinks/pause`` (``resume``, ``disable``, ``enable``) ``{"name"}``: the row
- ``POST /sinks/replay`` ``{"name", "from_seq"}`` or ``{"name", "since"}``: the row
- ``POST /sinks/replay-range`` ``{"name", "from_seq", "to_seq", "streams", "types"}``:
  ``{"count"}``
- ``POST /dlq/retry`` (``drop``) ``{"sink", "ids": [...]}`` or ``{"sink", "all": true}``:
  ``{"count"}``
- ``POST /pulls/reset`` ``{"name", "from": "oldest" or "latest"}``: ``{"name", "was", "from"}``
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from streamd.admin.app import Request, Response, Route
from streamd.drain import Drain
from streamd.errors import UsageError
from streamd.ingest.pull import Pulls
from streamd.journal import utc_now
from streamd.ops import OPERATIONS, Operation, ResetPull


def _decode(request: Request, kind: type[Operation[Any]]) -> Operation[Any]:
    try:
        op: Operation[Any] = msgspec.json.decode(request.body or b"{}", type=kind)
        return op
    except msgspec.ValidationError as exc:
        raise UsageError(f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise UsageError(f"body: not valid JSON: {exc}") from None


def operation_routes(drain: Drain, pulls: Pulls) -> list[Route]:
    """``GET /sinks`` and one route per operation, run by ``drain`` or ``pulls``."""

    async def list_sinks(request: Request) -> Response:
        return Response(200, [dataclasses.asdict(s) for s in await drain.sinks()])

    def handler(kind: type[Operation[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            op = _decode(request, kind)
            if isinstance(op, ResetPull):
                reset = op
                result: object = await pulls.reset(
                    op.pull, lambda conn: reset.apply_running(conn, utc_now()), op.restart
                )
            else:
                result = await drain.run(op)
            return Response(200, msgspec.to_builtins(result))

        return handle

    return [
        Route("GET", "/sinks", list_sinks),
        *(Route("POST", kind.route, handler(kind)) for kind in OPERATIONS),
    ]
