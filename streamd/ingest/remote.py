"""A worker process's journal: batches go to the main process, answers come back.

:class:`RemoteJournal` has the one method the ingest app calls on a journal,
``append``, so :class:`~streamd.ingest.app.IngestApp` runs unchanged in a worker:
it returns only once the main process reported the commit (ack means durable),
and the main process's refusals come back as the same errors, so the app answers
the same 503 + Retry-After as in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from streamd.errors import JournalBusy, JournalClosed, JournalError
from streamd.ingest import ipc
from streamd.journal.writer import AppendResult, Batch

log = logging.getLogger("streamd.worker")

_RECV = 256 * 1024


class MainGone(JournalClosed):
    """Raised for batches in flight when the connection to the main process is lost."""

    def __init__(self) -> None:
        super().__init__("streamd is restarting", retry_after=10)


@dataclass(slots=True, eq=False)
class _Waiter:
    done: trio.Event
    result: AppendResult | None = None
    error: JournalError | None = None


class RemoteJournal:
    """The journal as seen from a worker: appends travel over ``stream`` to the main process."""

    def __init__(self, stream: trio.SocketStream) -> None:
        """The main process applies the commit budget (see :meth:`append`)."""
        self._stream = stream
        self._next_id = 1
        self._waiting: dict[int, _Waiter] = {}
        self._out = bytearray()
        self._out_ready = trio.Event()
        self._queued_bytes = 0
        self._sent_bytes = 0
        self._sent = trio.Event()
        self._gone = False

    def refusal(self) -> JournalBusy | None:
        """Always None: the main process's queue is not known here; it refuses on submit."""
        return None

    async def append(self, batch: Batch) -> AppendResult:
        """Journal ``batch`` through the main process; return once it committed.

        Raises what the main process refused with (:class:`JournalBusy` and its
        kinds, among them the commit budget's :class:`~streamd.errors.CommitTimeout`;
        :class:`JournalError`), :class:`MainGone` when the main process went away.

        No timer of its own: only the main process knows whether its writer took the
        batch (then it is waited for, and a batch that committed is never answered
        503) or abandoned it at the commit budget (then it answers the 503 itself).
        """
        if self._gone:
            raise MainGone
        ident = self._next_id
        self._next_id += 1
        waiter = _Waiter(trio.Event())
        self._waiting[ident] = waiter
        try:
            self.send(ipc.Append(ident, batch))
            await waiter.done.wait()
        finally:
            # Answered or cancelled: a late answer finds nobody waiting.
            self._waiting.pop(ident, None)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def send(self, message: ipc.Append | ipc.Ready | ipc.Observed) -> None:
        """Queue a message for the main process (the sender task writes it)."""
        data = ipc.frame(message)
        self._out += data
        self._queued_bytes += len(data)
        self._out_ready.set()

    def resolve(self, message: ipc.Committed | ipc.Refused) -> None:
        """The main process's answer to one batch."""
        waiter = self._waiting.pop(message.id, None)
        if waiter is None:
            return  # its request was cancelled (the sender went away)
        if isinstance(message, ipc.Committed):
            waiter.result = AppendResult(message.accepted, message.duplicates, message.delivery)
        else:
            waiter.error = refusal_error(message)
        waiter.done.set()

    def lost(self) -> None:
        """The main process is gone: fail every batch in flight (503, nothing acked)."""
        self._gone = True
        self._sent.set()  # nothing more will be written: release flushed()
        for waiter in self._waiting.values():
            waiter.error = MainGone()
            waiter.done.set()
        self._waiting.clear()

    async def flushed(self) -> None:
        """Return once everything queued so far was written to the main process."""
        target = self._queued_bytes
        while self._sent_bytes < target and not self._gone:
            await self._sent.wait()

    async def serve_sender(self) -> None:
        """Write queued frames, everything queued at once (one write per wake-up).

        Returns when the main process's end is closed (the receiver then sees EOF).
        """
        while True:
            await self._out_ready.wait()
            self._out_ready = trio.Event()
            data, self._out = bytes(self._out), bytearray()
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self._sent_bytes += len(data)
            sent, self._sent = self._sent, trio.Event()
            sent.set()

    async def serve_receiver(
        self, reader: ipc.FrameReader, on_control: Callable[[ipc.ToWorker], None]
    ) -> None:
        """Read the main process's frames until EOF; answers resolve batches, other
        messages go to ``on_control``. Returns at EOF (the main process is gone).

        Raises :class:`~streamd.ingest.ipc.ProtocolError` on a bad frame.
        """
        while True:
            data = await self._stream.receive_some(_RECV)
            if not data:
                return
            for message in reader.feed(data):
                if isinstance(message, ipc.Committed | ipc.Refused):
                    self.resolve(message)
                else:
                    on_control(message)


def refusal_error(message: ipc.Refused) -> JournalError:
    """The error that makes the app answer as the main process's refusal says."""
    if message.retry_after is not None:
        return JournalBusy(message.message, message.retry_after, message.reason)
    error = JournalError(message.message)
    error.reason = message.reason
    return error


def refusal(ident: int, exc: BaseException) -> ipc.Refused:
    """How the main process reports a failed append (the inverse of :func:`refusal_error`)."""
    if isinstance(exc, JournalBusy):
        return ipc.Refused(ident, exc.status_hint, str(exc), exc.retry_after, exc.reason)
    if isinstance(exc, JournalError):
        return ipc.Refused(ident, exc.status_hint, str(exc), None, exc.reason)
    return ipc.Refused(ident, 503, "internal error; retry later", 5, "internal")
