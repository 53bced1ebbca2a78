"""One way to run an operator's action, whether or not a daemon runs.

:class:`Operator` runs an :class:`~streamd.ops.actions.Operation` on the journal it
was given: through the admin API of the daemon that holds the journal's writer
lock (found by :mod:`streamd.ops.discovery`), or, when none runs, directly on the
file under that lock. The rules are the operation's own in both cases.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, TypeVar

import msgspec
import orjson

from streamd.clock import utc_now
from streamd.drain import store
from streamd.errors import ConfigError, JournalError, JournalHeld, StreamdError
from streamd.ops.actions import Operation, OperationRefused
from streamd.ops.discovery import DaemonUnreachable, endpoint, running_daemon

T = TypeVar("T")


class OperationFailed(StreamdError):
    """Raised when the daemon refused or failed an operation (its message, the URL)."""


class Operator:
    """Runs operations on the journal at ``journal``.

    ``admin_url`` and ``token_file`` override what the daemon file says (a daemon
    behind a proxy, a token kept elsewhere).
    """

    def __init__(
        self, journal: str, *, admin_url: str | None = None, token_file: str | None = None
    ) -> None:
        self.journal = journal
        self.admin_url = admin_url
        self.token_file = token_file
        self.online: bool | None = None  # how the last operation ran

    def run(self, op: Operation[T]) -> T:
        """Run ``op``; raises :class:`OperationRefused` (its rules),
        :class:`DaemonUnreachable`, :class:`OperationFailed` or :class:`JournalError`."""
        if running_daemon(self.journal):
            self.online = True
            return self._post(op)
        self.online = False
        try:
            return self._offline(op)
        except JournalHeld:
            # It started between the look and the lock: go through it.
            self.online = True
            return self._post(op)

    def _offline(self, op: Operation[T]) -> T:
        now = utc_now()
        with store.open_offline(self.journal, now) as conn:
            try:
                with store.transaction(conn):
                    return op.apply(conn, now)
            except sqlite3.DatabaseError as exc:
                raise JournalError(f"{self.journal}: {exc}") from exc

    def _post(self, op: Operation[T]) -> T:
        import httpx

        from streamd.auth import read_token_file

        # One line per request at INFO would precede every answer: the URL is in ours.
        logging.getLogger("httpx").setLevel(logging.WARNING)

        where = endpoint(self.journal, admin_url=self.admin_url, token_file=self.token_file)
        url = where.url.rstrip("/") + op.route
        if where.token_file is None:
            raise DaemonUnreachable(f"no admin token file known for {where.url}: give --token-file")
        try:
            token = read_token_file(where.token_file)[0]
        except ConfigError as exc:
            raise DaemonUnreachable(
                f"streamd is running on {self.journal}; its admin token cannot be read "
                f"({exc}): run this as the daemon's user, or give --token-file"
            ) from None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if where.journal_id:
            headers["X-Streamd-Journal-Id"] = where.journal_id
        try:
            with httpx.Client(timeout=30) as client:
                reply = client.post(url, content=msgspec.json.encode(op), headers=headers)
        except httpx.HTTPError as exc:
            raise DaemonUnreachable(
                f"streamd is running on {self.journal}, but its admin listener at {url} did "
                f"not answer ({type(exc).__name__}: {exc}); is --admin-url right?"
            ) from None
        if reply.status_code != 200:
            try:
                detail: Any = orjson.loads(reply.content).get("error")
            except (orjson.JSONDecodeError, AttributeError):
                detail = None
            if reply.status_code in (400, 409) and detail:
                raise OperationRefused(str(detail))  # its rules: the same words as offline
            hint = (
                " (the token does not match this daemon's: give --token-file)"
                if reply.status_code == 401
                else ""
            )
            raise OperationFailed(
                f"{url}: HTTP {reply.status_code}: {detail or reply.reason_phrase}{hint}"
            )
        try:
            result: T = msgspec.json.decode(reply.content, type=op.result)
            return result
        except msgspec.MsgspecError as exc:
            raise OperationFailed(f"{url}: an answer this streamd cannot read: {exc}") from None
