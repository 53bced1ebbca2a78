"""Who pulls a journal when several receivers are configured with the same pull source.

Adobe's journal has one position per consumer, not per receiver: two receivers pulling
the same registration would each fetch every event (harmless at a destination keyed by
event id, but twice the work and twice the quota). So exactly one receiver pulls at a
time: the one holding the pull's *lease*, a row in a PostgreSQL table every receiver
reaches (the engine the team already runs; streamd grows no cluster protocol):

    name text primary key, holder text, expires_at timestamptz,
    position text, restart text, updated_at timestamptz

- A receiver takes the lease when the row is free or expired, and renews it every
  ``ttl / 3``; every time is PostgreSQL's ``now()``, so the receivers' clocks never
  matter.
- The leader saves the position of each page it journaled in the same row, *only while it
  holds the lease* (the ``UPDATE`` names the holder: a leader that lost the lease cannot
  overwrite its successor's position). The next leader starts from there.
- A leader that cannot renew (the database is unreachable) stops pulling before its
  lease can expire, so two receivers never pull at once for longer than one page.
- A leader that stops gracefully hands over at once (its lease is expired on the way
  out); one that dies is replaced within ``ttl`` plus a third of it.

A page journaled by the old leader after its last saved position is fetched again by
the new one: the destination drops it by event key (postgres, nats) or keeps a copy
(kafka, at least once). Blocking psycopg calls run in a worker thread, one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import trio

from streamd.errors import StreamdError

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

log = logging.getLogger("streamd.ingest.lease")


class LeaseError(StreamdError):
    """Raised when the lease's database cannot be reached or refuses a statement."""


class LeaseHeld(StreamdError):
    """Raised when an operator resets a pull on a receiver that does not lead it: the
    leader would overwrite the shared position with its next page."""

    status_hint = 409


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """``[pulls.lease]``: where the lease lives and how long it lasts."""

    dsn: str
    name: str  # the pull source's name: the row's key
    holder: str  # this receiver (``instance``)
    password: str | None = None
    table: str = "streamd_pull_leases"
    ttl: float = 15.0
    connect_timeout: float = 10.0


def _quoted(table: str) -> str:
    return ".".join(f'"{part}"' for part in table.split("."))


class PgLease:
    """One pull source's lease row (see the module docstring)."""

    def __init__(self, settings: LeaseSettings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._created = False

    @property
    def ttl(self) -> float:
        return self.settings.ttl

    async def acquire(self) -> tuple[str | None, str | None] | None:
        """Take (or keep) the lease: the shared (position, restart), or None when another
        receiver holds it."""
        return await self._run(self._acquire)

    async def renew(self) -> bool:
        """Extend the lease; False when it is no longer ours."""
        return await self._run(self._renew)

    async def save(self, position: str) -> bool:
        """Record the position of a journaled page; False when the lease is not ours."""
        return await self._run(lambda conn: self._save(conn, position))

    async def reset(self, restart: str) -> str | None:
        """An operator's reset: the shared position cleared and ``restart`` ("oldest",
        "latest") recorded for whoever leads next. Done (None) when the lease is ours or
        free (expired, or no row yet); otherwise the live holder's name, nothing changed."""
        return await self._run(lambda conn: self._reset(conn, restart))

    async def release(self) -> None:
        """Hand over now (a graceful stop): expire the lease if it is ours."""
        await self._run(self._release)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._close, limiter=self._limiter)

    # -- in the worker thread ---------------------------------------------------------

    async def _run(self, op: Callable[[psycopg.Connection[tuple[object, ...]]], T]) -> T:
        def call() -> T:
            import psycopg

            try:
                return op(self._connect())
            except psycopg.Error as exc:
                self._close()
                raise LeaseError(f"the pull lease's database: {_first_line(exc)}") from None

        # Shielded: a statement under way finishes in its thread anyway, and the caller
        # must learn whether the lease was renewed or the position saved.
        with trio.CancelScope(shield=True):
            result = await trio.to_thread.run_sync(call, limiter=self._limiter)
        return result

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        import psycopg

        if self._conn is None or self._conn.closed:
            s = self.settings
            self._conn = psycopg.connect(
                s.dsn,
                password=s.password,
                connect_timeout=max(1, round(s.connect_timeout)),
                application_name=f"streamd/pull/{s.name}",
                autocommit=True,
            )
            self._created = False
        if not self._created:
            table = _quoted(self.settings.table)
            if "." in self.settings.table:
                schema = _quoted(self.settings.table.split(".")[0])
                self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "name text PRIMARY KEY, holder text NOT NULL, "
                "expires_at timestamptz NOT NULL, position text, restart text, "
                "updated_at timestamptz NOT NULL DEFAULT now())"
            )
            self._created = True
        return self._conn

    def _acquire(
        self, conn: psycopg.Connection[tuple[object, ...]]
    ) -> tuple[str | None, str | None] | None:
        s = self.settings
        row = conn.execute(
            f"INSERT INTO {_quoted(s.table)} AS l (name, holder, expires_at) "  # noqa: S608
            "VALUES (%(name)s, %(holder)s, now() + make_interval(secs => %(ttl)s)) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at, updated_at = now() "
            "WHERE l.holder = excluded.holder OR l.expires_at < now() "
            "RETURNING position, restart",
            {"name": s.name, "holder": s.holder, "ttl": s.ttl},
        ).fetchone()
        if row is None:
            return None
        position, restart = row
        return (None if position is None else str(position)), (
            None if restart is None else str(restart)
        )

    def _renew(self, conn: psycopg.Connection[tuple[object, ...]]) -> bool:
        s = self.settings
        cur = conn.execute(
            f"UPDATE {_quoted(s.table)} SET "  # noqa: S608
            "expires_at = now() + make_interval(secs => %(ttl)s), updated_at = now() "
            "WHERE name = %(name)s AND holder = %(holder)s AND expires_at > now()",
            {"name": s.name, "holder": s.holder, "ttl": s.ttl},
        )
        return cur.rowcount == 1

    def _save(self, conn: psycopg.Connection[tuple[object, ...]], position: str) -> bool:
        s = self.settings
        cur = conn.execute(
            f"UPDATE {_quoted(s.table)} SET position = %(position)s, "  # noqa: S608
            "restart = NULL, updated_at = now() "
            "WHERE name = %(name)s AND holder = %(holder)s AND expires_at > now()",
            {"name": s.name, "holder": s.holder, "position": position},
        )
        return cur.rowcount == 1

    def _reset(self, conn: psycopg.Connection[tuple[object, ...]], restart: str) -> str | None:
        s = self.settings
        cur = conn.execute(
            f"UPDATE {_quoted(s.table)} SET position = NULL, "  # noqa: S608
            "restart = %(restart)s, updated_at = now() "
            "WHERE name = %(name)s AND (holder = %(holder)s OR expires_at <= now())",
            {"name": s.name, "holder": s.holder, "restart": restart},
        )
        if cur.rowcount == 1:
            return None
        row = conn.execute(
            f"SELECT holder FROM {_quoted(s.table)} WHERE name = %(name)s",  # noqa: S608
            {"name": s.name},
        ).fetchone()
        return None if row is None else str(row[0])

    def _release(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        s = self.settings
        conn.execute(
            f"UPDATE {_quoted(s.table)} SET expires_at = now(), "  # noqa: S608
            "updated_at = now() WHERE name = %(name)s AND holder = %(holder)s",
            {"name": s.name, "holder": s.holder},
        )

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
