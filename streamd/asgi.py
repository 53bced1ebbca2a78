"""What every ASGI app of streamd shares: the lifespan answer and a bounded body read.

The ingest app reads its body with deadlines and slots (``ingest/admission.py``); the
admin listener and the emulator's servers read small bodies with a size limit only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

# In a ``http.response.start`` message: the app sends the whole body at once right after
# it, so the connection may write the head and the body together (one ``send`` instead
# of two: ``streamd.service.http``). A key ASGI servers ignore.
BODY_FOLLOWS = "streamd.body_follows"

# An app (class) with this attribute set to True never awaits ``receive()`` after a
# request's last body message: it does not wait for ``http.disconnect``. The edge may
# then run it in the connection's own task once the whole body has arrived
# (``streamd.service.inline``), where nothing would deliver that message until it has
# answered; and answer a plain request without hypercorn's stream
# (``streamd.service.fast``), where its answer is written at its last body message.
RUNS_INLINE = "streamd_runs_inline"


class ClientGone(Exception):
    """Raised by :func:`read_body` when the client disconnected before the body ended."""


async def lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan: nothing to start or stop; answer both."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes (the rest is not
    read). Raises :class:`ClientGone` when the client disconnects first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
