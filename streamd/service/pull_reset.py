"""``streamd journal pull-reset``: start a pull source over.

The saved position is cleared and the restart point set (``oldest`` or ``latest``), as a
410 would. What it pulls again is deduplicated against the journal.

- On a stopped daemon's journal, :func:`reset_pull` writes it; the next start of
  streamd pulls from there.
- While streamd runs, ``POST /pulls/reset`` on the admin listener (:func:`pull_routes`,
  which the command uses then) stops the pull, clears its position in the writer's
  next transaction and starts it again (:meth:`~streamd.ingest.pull.Pulls.reset`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from streamd.admin.app import Request, Response, Route
from streamd.drain import store
from streamd.errors import JournalError, UsageError
from streamd.ingest.pull import Pulls
from streamd.journal import utc_now


@dataclass(frozen=True, slots=True)
class Reset:
    name: str
    was: str | None  # the position it had
    restart: str


def reset_pull(path: str, name: str, restart: str) -> Reset:
    """Clear pull ``name``'s position; raises :class:`UsageError` (unknown pull, bad
    ``restart``) or :class:`JournalError` (no journal, a daemon holds it)."""
    if restart not in ("oldest", "latest"):
        raise UsageError(f"--from must be oldest or latest, got {restart!r}")
    now = utc_now()
    with store.open_offline(path, now) as conn:
        try:
            with store.transaction(conn):
                row = conn.execute(
                    "SELECT position FROM pull_positions WHERE source = ?", (name,)
                ).fetchone()
                if row is None:
                    known = [r[0] for r in conn.execute("SELECT source FROM pull_positions")]
                    raise UsageError(
                        f"no pull named {name!r} has run on this journal"
                        + (f" (pulls: {', '.join(known)})" if known else "")
                    )
                conn.execute(
                    "UPDATE pull_positions SET position = NULL, restart = ?, updated_at = ? "
                    "WHERE source = ?",
                    (restart, now, name),
                )
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: {exc}") from exc
    return Reset(name, row[0], restart)


class ResetRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /pulls/reset`` body: ``{"name": ..., "from": "oldest" | "latest"}``."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    restart: Literal["oldest", "latest"] = msgspec.field(default="oldest", name="from")


def pull_routes(pulls: Pulls) -> list[Route]:
    """The admin routes of the running pull sources."""

    async def reset(request: Request) -> Response:
        try:
            body = msgspec.json.decode(request.body or b"{}", type=ResetRequest)
        except msgspec.ValidationError as exc:
            raise UsageError(f"body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise UsageError(f"body: not valid JSON: {exc}") from None
        was = await pulls.reset(body.name, body.restart)
        return Response(200, {"name": body.name, "was": was, "from": body.restart})

    return [Route("POST", "/pulls/reset", reset)]
