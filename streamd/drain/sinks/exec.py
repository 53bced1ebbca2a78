"""The ``exec`` sink: run a command per batch, JSON Lines on its standard input.

Exit status 0 confirms the batch. Exit status 65 (``EX_DATAERR``: "the input
was wrong") dead-letters it; any other status, a command that cannot be
started, or one that outlives the sink's timeout is retried. The command runs
in its own session; on timeout (or a stop) its whole process group is killed,
so a shell pipeline leaves nothing behind. Only the first 2 KiB of its
standard error are kept (as the reason); its standard output is discarded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

from streamd.drain.sinks.base import (
    CONFIRMED,
    DrainEvent,
    Result,
    json_lines,
    permanent,
    transient,
)

_MAX_STDERR = 2048
EX_DATAERR = 65


@dataclass(frozen=True, slots=True)
class ExecSettings:
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


class ExecSink:
    """Starts ``command`` once per batch."""

    def __init__(self, settings: ExecSettings) -> None:
        self.settings = settings

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        data = json_lines(events)
        env = {**os.environ, **self.settings.env} if self.settings.env else None
        try:
            proc = await trio.lowlevel.open_process(
                list(self.settings.command),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, killed as a whole
                env=env,
                cwd=self.settings.cwd,
            )
        except OSError as exc:
            return transient(f"cannot start {self.settings.command[0]!r}: {exc.strerror or exc}")
        stderr = bytearray()
        finished = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed, proc, data)
                nursery.start_soon(_collect, proc, stderr)
                await proc.wait()
            finished = True
        finally:
            if not finished:  # cancelled (the timeout, or a stop), or a child holds stderr
                _kill_group(proc.pid)
                with trio.CancelScope(shield=True):
                    await proc.wait()
        text = bytes(stderr).decode("utf-8", errors="replace").strip() or None
        status = proc.returncode
        if status == 0:
            return CONFIRMED
        reason = f"{self.settings.command[0]} exited with status {status}"
        if status is not None and status < 0:
            reason = f"{self.settings.command[0]} was killed by signal {-status}"
        if status == EX_DATAERR:
            return permanent(reason, text)
        return transient(reason, text)

    async def aclose(self) -> None:
        return None


async def _feed(proc: trio.Process, data: bytes) -> None:
    assert proc.stdin is not None
    async with proc.stdin:
        # A command that stops reading early: its exit status tells the rest.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.send_all(data)


async def _collect(proc: trio.Process, into: bytearray) -> None:
    assert proc.stderr is not None
    async with proc.stderr:
        while chunk := await proc.stderr.receive_some(65536):
            if len(into) < _MAX_STDERR:
                into += chunk[: _MAX_STDERR - len(into)]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
