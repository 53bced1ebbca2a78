"""The ``file`` sink: JSON Lines files, rotated by size and age, fsynced before the
cursor moves, optionally gzipped once closed.

Files are named ``<prefix>-<UTC time>-<first seq>.jsonl`` in ``directory``;
the newest one is being written. Each batch is written with one ``write`` (batches
that arrive meanwhile share the next one) and, by default, fsynced before the
engine hears "confirmed": a crash never
advances the cursor past lines that are not on disk. Each start opens a new
file, so a file is never appended to by two runs.
"""

from __future__ import annotations

import gzip
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

from streamd.drain.sinks.base import (
    CONFIRMED,
    DrainEvent,
    GroupWriter,
    Result,
    json_lines,
    transient,
)
from streamd.fsutil import atomic_file, fsync_dir


@dataclass(frozen=True, slots=True)
class FileSettings:
    directory: str
    prefix: str
    max_bytes: int = 64 * 1024 * 1024
    max_age: float = 3600.0
    gzip: bool = False
    fsync: bool = True


class FileSink:
    """Appends batches to the current file in a worker thread."""

    def __init__(self, settings: FileSettings) -> None:
        self.settings = settings
        self._fd: int | None = None
        self._path = ""
        self._size = 0
        self._opened = 0.0
        self._limiter = trio.CapacityLimiter(1)  # one writer of the file at a time
        self._group = GroupWriter(self._write_group)

    async def deliver(self, events: Sequence[DrainEvent], *, delivery_id: str = "") -> Result:
        # Batches arriving while one is written and fsynced share the next write.
        return await self._group.deliver(events)

    async def _write_group(self, events: Sequence[DrainEvent]) -> Result:
        data = json_lines(events)
        try:
            await trio.to_thread.run_sync(self._write, data, events[0].seq, limiter=self._limiter)
        except OSError as exc:
            # A directory that refuses writes, a full disk: the destination is down.
            return transient(f"{exc.filename or self.settings.directory}: {exc.strerror or exc}")
        return CONFIRMED

    def _write(self, data: bytes, first_seq: int) -> None:
        s = self.settings
        if self._fd is not None and (
            self._size >= s.max_bytes or time.monotonic() - self._opened >= s.max_age
        ):
            self._close_current()
        if self._fd is None:
            os.makedirs(s.directory, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            path = os.path.join(s.directory, f"{s.prefix}-{stamp}-{first_seq}.jsonl")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._path, self._size, self._opened = path, 0, time.monotonic()
            if s.fsync:
                fsync_dir(s.directory)  # the new name survives a crash too
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if s.fsync:
                os.fsync(self._fd)  # on disk before the cursor advances
        except OSError:
            # A half-written batch stays behind as a partial line: start a fresh file
            # so the retry's lines are not glued to it.
            self._close_current()
            raise
        self._size += len(data)

    def _close_current(self) -> None:
        fd, path = self._fd, self._path
        self._fd = None
        if fd is None:
            return
        os.close(fd)
        if self.settings.gzip:
            _gzip(path, fsync=self.settings.fsync)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._close_current, limiter=self._limiter)


def _gzip(path: str, *, fsync: bool) -> None:
    """``path`` → ``path.gz`` (atomically, fsynced when ``fsync``), then remove the original."""
    # 0666 less the umask: the mode a plain open() gave the .gz files before.
    with (
        open(path, "rb") as src,
        atomic_file(path + ".gz", mode=0o666, fsync=fsync) as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst,
    ):
        shutil.copyfileobj(src, dst, 1024 * 1024)
    os.unlink(path)
    if fsync:
        fsync_dir(os.path.dirname(path))  # the removal too
