"""Output for people and pipes: tables, colours, progress on a terminal; JSON Lines otherwise.

``--format auto`` (the default) picks a table when stdout is a terminal and
JSON Lines when it is not; colours only on a terminal and never when
``NO_COLOR`` is set (https://no-color.org). Standard library only: a
fixed-width table streams row by row (``tail -f`` cannot know its widths
in advance), and a one-line progress bar needs nothing more than ``\\r``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import orjson

from streamd.inspect.reader import COLUMNS, Row

FORMATS = ("auto", "table", "jsonl")
_TYPE_PREFIX = "com.adobe.platform.marketo."
_STREAM_COLOUR = {"activity": "36", "audit": "35", "notification": "33", "other": "37"}


def is_tty(stream: IO[Any]) -> bool:
    """True when ``stream`` is a terminal."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_format(requested: str, stream: IO[Any]) -> str:
    """``table`` or ``jsonl`` (or ``csv``) for ``--format``; ``auto`` follows the terminal."""
    if requested == "auto":
        return "table" if is_tty(stream) else "jsonl"
    return requested


def colour_enabled(stream: IO[Any], env: Mapping[str, str] | None = None) -> bool:
    """Colours only on a terminal, and not when ``NO_COLOR`` is set to anything non-empty."""
    env = os.environ if env is None else env
    return is_tty(stream) and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def event_record(row: Row) -> dict[str, Any]:
    """An event as a JSON-ready mapping: its columns and, as ``event``, the raw JSON verbatim."""
    record: dict[str, Any] = dict(zip(COLUMNS[:-1], row[:-1], strict=True))
    raw = row[-1]
    if "\n" in raw or "\r" in raw:
        # Valid JSON has line breaks only between tokens (inside strings they are escaped):
        # as spaces they change no value, and the event stays on its one line.
        raw = raw.replace("\r", " ").replace("\n", " ")
    record["event"] = orjson.Fragment(raw)  # spliced in as received, not re-encoded
    return record


def event_line(row: Row) -> bytes:
    """One JSON Lines line (with its newline) for an event."""
    return orjson.dumps(event_record(row), option=orjson.OPT_APPEND_NEWLINE)


def short_type(value: str | None) -> str:
    """The type without ``com.adobe.platform.marketo.`` (``activity.standard.openemail``)."""
    if value is None:
        return "-"
    return value[len(_TYPE_PREFIX) :] if value.startswith(_TYPE_PREFIX) else value


class EventTable:
    """A fixed-width table of events, printed one row at a time."""

    # (header, width); the last column (the event key) takes what is left.
    _COLUMNS = (
        ("SEQ", 9),
        ("OCCURRED (UTC)", 19),
        ("TYPE", 38),
        ("MUNCHKIN", 11),
        ("ACT", 6),
        ("LEAD", 9),
        ("SOURCE", 10),
    )

    def __init__(self, out: IO[str], *, colour: bool, width: int | None = None) -> None:
        self._out = out
        self._colour = colour
        self._width = width or shutil.get_terminal_size((120, 24)).columns
        self._header_done = False

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self._colour else text

    def header(self) -> None:
        """Print the header line (once)."""
        if self._header_done:
            return
        self._header_done = True
        cells = [name.ljust(width) for name, width in self._COLUMNS] + ["KEY"]
        self._out.write(self._paint("1", " ".join(cells).rstrip()) + "\n")

    def row(self, row: Row) -> None:
        """Print one event."""
        self.header()
        seq, key, stream, etype, munchkin, act, lead, occurred, _received, source = row[:10]
        values = [
            str(seq),
            (occurred or "-")[:19].replace("T", " "),
            short_type(etype),
            munchkin or "-",
            "-" if act is None else str(act),
            "-" if lead is None else str(lead),
            source,
        ]
        cells = []
        for (_, width), value in zip(self._COLUMNS, values, strict=True):
            text = value if len(value) <= width else value[: width - 1] + "…"
            cells.append(text.ljust(width))
        used = sum(w + 1 for _, w in self._COLUMNS)
        room = max(12, self._width - used)
        key_text = key if len(key) <= room else key[: room - 1] + "…"
        cells[0] = self._paint("2", cells[0])
        cells[2] = self._paint(_STREAM_COLOUR.get(stream, "37"), cells[2])
        self._out.write(" ".join([*cells, key_text]) + "\n")


def write_table(
    out: IO[str], header: Sequence[str], rows: Sequence[Sequence[Any]], *, colour: bool = False
) -> None:
    """A plain table sized to its contents (for small, finite results: ``query``, ``stats``)."""
    text_rows = [["" if v is None else str(v) for v in r] for r in rows]
    widths = [len(h) for h in header]
    for r in text_rows:
        for i, value in enumerate(r):
            widths[i] = min(max(widths[i], len(value)), 60)
    head = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    out.write((f"\x1b[1m{head}\x1b[0m" if colour else head) + "\n")
    for r in text_rows:
        cells = [v if len(v) <= w else v[: w - 1] + "…" for v, w in zip(r, widths, strict=True)]
        out.write("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n")


class Progress:
    """A one-line progress bar on a terminal (redrawn at most 10 times a second), else silent."""

    def __init__(self, stream: IO[str] | None, label: str, total: int) -> None:
        self._stream = stream if stream is not None and is_tty(stream) else None
        self._label = label
        self._total = max(total, 1)
        self._last = 0.0
        self._started = time.monotonic()

    @property
    def active(self) -> bool:
        """True when a bar is being drawn."""
        return self._stream is not None

    def update(self, done: int, count: int) -> None:
        """``done`` of ``total`` units (seq positions), ``count`` items so far."""
        if self._stream is None:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        fraction = min(done / self._total, 1.0)
        width = 30
        filled = int(fraction * width)
        rate = count / max(now - self._started, 1e-6)
        self._stream.write(
            f"\r{self._label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{fraction:6.1%}  {count:,} events  {rate:,.0f}/s "
        )
        self._stream.flush()

    def finish(self) -> None:
        """Clear the bar."""
        if self._stream is not None:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()


def stdout_text() -> IO[str]:
    """``sys.stdout`` (a seam so tests can swap it)."""
    return sys.stdout
