"""Replace a file atomically: a temporary file beside it, fsync, rename, fsync the directory.

Every file streamd writes whole (token files, the OAuth signing key, cached Adobe keys,
exports, backups, the file sink's gzipped files, the emulator's summary) goes through
here, so a crash leaves either the old file or the new one, never a partial one, and
the new name survives a power cut once the call returns. The temporary file is named
``.<name>.<random>.tmp`` in the destination's directory (a rename only stays atomic
within one file system) and is removed when anything fails.

Plain blocking calls: call them from a worker thread in async code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from typing import BinaryIO

# Default for files that hold secrets or people's data: private to their owner.
PRIVATE = 0o600


def atomic_write(path: str, data: bytes, *, mode: int = PRIVATE, fsync: bool = True) -> None:
    """Replace (or create) ``path`` with ``data`` atomically.

    The file gets ``mode`` (less the process umask, as :func:`os.open` applies it).
    ``fsync`` False skips both fsyncs (atomic against a crash of the process, not of
    the machine). Raises :class:`OSError`; the temporary file is removed then and
    ``path`` is left as it was (unless the error came after the rename, from the
    directory's fsync).
    """
    with atomic_file(path, mode=mode, fsync=fsync) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path: str, *, mode: int = PRIVATE, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into, put in place on a clean exit.

    On a clean exit of the ``with`` block the file is flushed, fsynced, closed and
    renamed over ``path``, then the directory is fsynced. When the block raises
    (cancellation included) the temporary file is closed and removed and ``path`` is
    left untouched. Raises :class:`OSError` (see :func:`atomic_write`).
    """
    fd, tmp = _create_temp(path, mode)
    try:
        f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _remove(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    except BaseException:
        _remove(tmp)
        raise
    _put_in_place(tmp, path, fsync=fsync)


@contextlib.contextmanager
def atomic_path(path: str, *, mode: int = PRIVATE, fsync: bool = True) -> Iterator[str]:
    """The name of an empty temporary file beside ``path``, renamed over it on a clean exit.

    For writers that need a file name rather than a file object (SQLite's backup).
    The file is created with ``mode`` before the block runs; on a clean exit it is
    fsynced and renamed over ``path``, then the directory is fsynced; when the block
    raises it is removed. Files the writer put beside it (``-journal``, ``-wal``) are
    the caller's to remove. Raises :class:`OSError` (see :func:`atomic_write`).
    """
    fd, tmp = _create_temp(path, mode)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
    except BaseException:
        _remove(tmp)
        raise
    _put_in_place(tmp, path, fsync=fsync)


def fsync_path(path: str) -> None:
    """fsync the file or directory at ``path``. Raises :class:`OSError`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    """fsync ``directory`` so that names created or renamed in it survive a power cut.

    A file system that cannot sync a directory (EINVAL) is skipped: there is nothing
    more to do on it. Raises :class:`OSError` for any other failure.
    """
    try:
        fsync_path(directory or ".")
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise


def _create_temp(path: str, mode: int) -> tuple[int, str]:
    directory, name = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), tmp
        except FileExistsError:  # a name left by a crash, or another writer's: draw again
            continue


def _put_in_place(tmp: str, path: str, *, fsync: bool) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if fsync:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def _remove(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)
