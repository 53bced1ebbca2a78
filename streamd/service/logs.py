"""Log set-up: readable lines on a terminal, one JSON object per line elsewhere.

Under journald (``$JOURNAL_STREAM`` names our stderr) each line starts with
the syslog priority in angle brackets (``<3>`` for errors, sd-daemon(3)), so
``journalctl -p warning`` filters by level. JSON lines carry ``ts``,
``level``, ``logger``, ``msg`` and any ``extra={...}`` fields of the call,
plus ``exc`` with the traceback when there is one. Tokens, secrets and
request bodies are never passed to a logger; sender-controlled text is
logged with ``repr`` (ingest/app.py), so a body cannot forge a line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson

LogFormat = Literal["auto", "json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text")

# logging level -> syslog priority (journald's PRIORITY)
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, *, journald: bool = False) -> None:
        super().__init__()
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=repr).decode()
        return f"<{_priority(record.levelno)}>{line}" if self._journald else line


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message`` (with the priority prefix under journald)."""

    def __init__(self, *, journald: bool = False) -> None:
        # journald stamps each line itself; a terminal gets the time.
        fmt = "%(levelname)s %(name)s: %(message)s" if journald else None
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self._journald:
            # Continuation lines (tracebacks) keep the record's priority.
            pri = f"<{_priority(record.levelno)}>"
            return "\n".join(pri + line for line in text.split("\n"))
        return text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be
    replaced after set-up: by a test harness, or a daemon re-opening it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def stream_is_journald(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM``)."""
    expected = environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def configure_logging(
    level: str,
    fmt: LogFormat = "auto",
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send every ``streamd`` log record to ``stream`` (stderr) in the chosen format.

    ``auto``: text on a terminal, JSON otherwise. Returns the handler.
    """
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    journald = stream_is_journald(out, env)
    if fmt == "auto":
        fmt = "text" if out.isatty() else "json"
    handler: logging.StreamHandler = (  # type: ignore[type-arg]
        _StderrHandler(out) if stream is None else logging.StreamHandler(out)
    )
    handler.setFormatter(
        JsonFormatter(journald=journald) if fmt == "json" else TextFormatter(journald=journald)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
