"""``streamd journal export``: JSON Lines or CSV, by the same filters, in constant memory.

Rows are read a page at a time (keyset pagination by ``seq``) and written as
they come; memory holds one page, whatever the journal's size. A file named
with ``--output`` is written beside itself under a temporary name, fsynced and
renamed only when the export is complete (then the directory is fsynced), so a
failed or interrupted export never leaves a partial file behind. Parquet is not offered: the one
well-kept writer (pyarrow) is a ~40 MB wheel; `duckdb` or `pandas` turn the
JSON Lines into Parquet in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from typing import IO, BinaryIO

import orjson

from streamd.errors import JournalError, UsageError
from streamd.fsutil import atomic_file
from streamd.inspect.commands import filters_from, open_from
from streamd.inspect.output import Progress, event_record
from streamd.inspect.reader import COLUMNS, Row, iter_pages, seq_window
from streamd.journal.writer import writer_lock_held

EXPORT_FORMATS = ("jsonl", "csv")
PAGE = 2000
_CSV_HEADER = [*COLUMNS[:-1], "event"]


def _jsonl(rows: list[Row]) -> bytes:
    dumps = orjson.dumps
    option = orjson.OPT_APPEND_NEWLINE
    return b"".join([dumps(event_record(r), option=option) for r in rows])


class _CsvEncoder:
    """CSV rows to bytes, through one reusable buffer (the csv module writes text)."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    def encode(self, rows: list[Row] | list[list[str]]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerows(rows)
        return self._buffer.getvalue().encode()


@contextlib.contextmanager
def _destination(name: str | None, stdout: IO[str]) -> Iterator[BinaryIO]:
    """stdout, or a temporary file renamed to ``name`` only on success."""
    if name is None or name == "-":
        stdout.flush()
        yield stdout.buffer if hasattr(stdout, "buffer") else _TextAsBinary(stdout)  # type: ignore[misc]
        return
    with contextlib.ExitStack() as stack:
        try:
            # 0666 less the umask: what a plain open() gives, as exports always had.
            f = stack.enter_context(atomic_file(name, mode=0o666))
        except OSError as exc:
            raise UsageError(f"--output: cannot create {name}: {exc.strerror}") from None
        yield f


class _TextAsBinary:
    """A binary face for a text stream without ``buffer`` (tests' StringIO)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(data.decode())

    def flush(self) -> None:
        self._out.flush()


# The default pace while a daemon ingests into the journal being exported.
DAEMON_RATE = 20_000


def cmd_export(args: argparse.Namespace, out: IO[str]) -> int:
    """Write every matching event to ``--output`` (or stdout) as JSON Lines or CSV."""
    filters = filters_from(args)
    # A sequential read gains nothing from a large page cache; keep memory small.
    path, conn = open_from(args, cache_mib=2)
    rate = args.max_rate
    if rate is None:
        rate = DAEMON_RATE if writer_lock_held(path) else 0
        if rate:
            print(
                f"streamd: a streamd is ingesting into this journal: exporting at most "
                f"{rate} events/s (--max-rate 0 for full speed)",
                file=sys.stderr,
            )
    started = time.monotonic()
    count = 0
    with closing(conn):
        try:
            lo, hi = seq_window(conn, filters)
            progress = Progress(sys.stderr, "export", hi - lo)
            encode = _jsonl if args.format == "jsonl" else _CsvEncoder().encode
            with _destination(args.output, out) as sink:
                if args.format == "csv":
                    sink.write(_CsvEncoder().encode([_CSV_HEADER]))
                for rows in iter_pages(conn, filters, limit=args.limit, page=PAGE):
                    sink.write(encode(rows))
                    count += len(rows)
                    progress.update(rows[-1][0] - lo, count)
                    if rate:
                        ahead = count / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                sink.flush()
            progress.finish()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: cannot read the journal: {exc}") from exc
    if args.output not in (None, "-"):
        print(f"streamd: exported {count} events to {args.output}", file=sys.stderr)
    return 0
