"""The ``stdout`` sink: JSON Lines on standard output, for trying things out."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import BinaryIO

import trio

from streamd.drain.sinks.base import CONFIRMED, DrainEvent, Result, json_lines, transient


class StdoutSink:
    """Writes each batch to standard output (or ``stream``) and flushes it."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        data = json_lines(events)
        try:
            await trio.to_thread.run_sync(self._write, data)
        except OSError as exc:  # a closed or broken pipe: retry later
            return transient(f"cannot write to standard output: {exc.strerror or exc}")
        return CONFIRMED

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._stream.flush()

    async def aclose(self) -> None:
        return None
