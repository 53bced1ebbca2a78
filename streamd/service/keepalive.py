"""hypercorn's keep-alive timer (the header deadline too) at one task per connection.

hypercorn 0.18's trio ``TCPServer`` calls ``idle_task.restart`` when a connection goes
idle (at its start and after each answer) and ``idle_task.stop`` when a request's
headers are in. Its ``TrioSingleTask`` starts a task for each ``restart``
(``nursery.start``) and cancels it at ``stop``, taking a lock each time: on a small
request that was the largest of hypercorn's own costs (the proposal for hypercorn, with
the measurement, is in tests/upstream/hypercorn_keepalive_timer). streamd's connection
class (streamd/service/http.py) gives hypercorn a :class:`KeepAliveTimer` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import TrioSingleTask

__all__ = ["KeepAliveTimer"]


class KeepAliveTimer(TrioSingleTask):
    """A stand-in for hypercorn's ``TrioSingleTask`` as ``TCPServer.idle_task``, with the
    same meaning: one task waits in a cancel scope whose deadline moves (now +
    ``keep_alive_timeout`` when idle, none while a request is in progress). At the
    deadline, hypercorn's ``_initiate_server_close`` runs, as its ``_idle_timeout`` does;
    shutting down closes an idle connection at once and a busy one after its answer
    (hypercorn's protocol does that). The connection calls :meth:`read_ended` when its
    read loop ends.
    """

    def __init__(self, conn: TCPServer) -> None:
        super().__init__()
        self._conn = conn
        self._scope = trio.CancelScope()
        self._idle = False
        self._started = False

    async def restart(self, task_group: Any, action: Callable[..., Any]) -> None:
        # ``action`` is TCPServer._idle_timeout: its wait and its close are _run's.
        self._idle = True
        if self._conn.context.terminated.is_set():
            self._scope.deadline = -math.inf  # shutting down: close an idle connection now
        else:
            self._scope.deadline = trio.current_time() + self._conn.config.keep_alive_timeout
        if not self._started:
            self._started = True
            task_group.spawn(self._run)

    async def stop(self) -> None:
        self._idle = False
        self._scope.deadline = math.inf

    def read_ended(self) -> None:
        """The read loop ended (the client closed, or the connection was closed under
        it): nothing more can arrive. Idle, close now: hypercorn's timer waited for its
        deadline, so a connection its client had closed kept its task, its memory and
        its place in the connection table for up to ``keep_alive_timeout``. During a
        request, end quietly: hypercorn runs no timer then, and the task must not keep
        the connection's task group open after the app is done."""
        if self._idle:
            self._scope.deadline = -math.inf
        else:
            self._scope.cancel()

    async def _run(self) -> None:
        with self._scope:
            await self._conn.context.terminated.wait()
            if not self._idle:
                # Shutting down during a request: hypercorn closes after the answer
                # (or the next restart moves the deadline to now).
                await trio.sleep_forever()
        if self._idle:  # the deadline passed, or shutting down while idle
            with trio.CancelScope(shield=True):
                await self._conn._initiate_server_close()
