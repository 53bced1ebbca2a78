"""``streamd journal backup DEST``: an online, consistent copy, verified before it is kept.

SQLite's backup API copies the journal page by page from a read-only
connection in **one step**: one read transaction, so the copy is the
snapshot of one commit, while the daemon goes on committing to the WAL (WAL
readers never block the writer). A stepwise backup would restart whenever
another process writes, which under steady ingest could be forever. The copy
is written to a temporary file beside DEST, switched to a self-contained
rollback journal (``journal_mode=DELETE``: one file, readable by tools that
cannot open WAL files), fsynced, verified (``streamd journal verify``'s
checks), and only then renamed to DEST.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import time
from contextlib import closing
from typing import IO

from streamd.errors import JournalError, UsageError
from streamd.fsutil import atomic_path
from streamd.inspect.reader import journal_path, max_seq, open_readonly
from streamd.inspect.verify import Report, print_report, verify_journal
from streamd.journal.schema import sqlite_uri


def backup_journal(source: str, dest: str, *, quick: bool = False) -> tuple[int, Report]:
    """Copy ``source`` to ``dest`` (which must not exist); return (newest seq, verify report).

    Raises :class:`UsageError` for an unusable DEST, :class:`JournalError` when the
    source cannot be read or the copy does not verify (nothing is left at DEST then).
    """
    if os.path.isdir(dest):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = os.path.join(dest, f"journal-{stamp}.db")
    if os.path.lexists(dest):
        raise UsageError(f"DEST: {dest} exists; choose a new name (a backup never overwrites)")
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise UsageError(f"DEST: directory {directory} does not exist")
    with contextlib.ExitStack() as replacing:
        try:
            # The journal holds people's data: the copy is private to its owner, like data_dir.
            tmp = replacing.enter_context(atomic_path(dest, mode=0o600))
        except OSError as exc:
            raise UsageError(f"DEST: cannot create a file in {directory}: {exc.strerror}") from None
        try:
            newest = _copy(source, tmp)
            report = verify_journal(tmp, quick=quick)
            if not report.healthy:
                raise _Unhealthy(report)
        except BaseException:
            for suffix in ("-journal", "-wal", "-shm"):  # the copy itself: atomic_path's
                with contextlib.suppress(OSError):
                    os.unlink(tmp + suffix)
            raise
    # Leaving the block fsynced the copy, renamed it to DEST and fsynced the directory.
    report.path = dest
    return newest, report


class _Unhealthy(JournalError):
    """Raised when the copy does not verify; carries the report."""

    def __init__(self, report: Report) -> None:
        super().__init__("the copy did not verify; nothing was kept")
        self.report = report


def _copy(source: str, tmp: str) -> int:
    """Back ``source`` up into the empty file ``tmp`` in one step; return the newest seq.

    Raises :class:`JournalError` when the source cannot be read, :class:`UsageError`
    when ``tmp`` cannot be opened.
    """
    with closing(open_readonly(source, cache_mib=8)) as src:
        try:
            target = sqlite3.connect(sqlite_uri(tmp, mode="rwc"), uri=True)
        except sqlite3.Error as exc:
            raise UsageError(f"DEST: cannot create {tmp}: {exc}") from None
        with closing(target):
            try:
                src.backup(target)  # one step: one snapshot (see the module docstring)
                newest = max_seq(target)
                target.execute("PRAGMA journal_mode = DELETE")
            except sqlite3.DatabaseError as exc:
                raise JournalError(f"{source}: backup failed: {exc}") from exc
    return newest


def cmd_backup(args: argparse.Namespace, out: IO[str]) -> int:
    """Back up the journal to DEST; exit 0 once the verified copy is in place."""
    dest = args.dest
    if not dest or "\x00" in dest:
        raise UsageError("DEST: expected a file or directory name")
    source = journal_path(args.data_dir, args.journal)
    if os.path.exists(dest) and os.path.samefile(dest, source):
        raise UsageError("DEST: that is the journal itself")
    try:
        newest, report = backup_journal(source, dest, quick=args.quick)
    except _Unhealthy as exc:
        print_report(exc.report, sys.stderr, "table")
        raise
    print(
        f"streamd: backup of {report.events_checked} events (seq up to {newest}) written to "
        f"{report.path} and verified",
        file=out,
    )
    return 0
