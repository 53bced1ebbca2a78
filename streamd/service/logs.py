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
import threading
import time
from collections.abc import Callable, Mapping
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
    # httpx logs every request at INFO ("HTTP Request: POST ..."): one line per batch an
    # http sink delivers and per page a pull fetches. Our own lines say what matters.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    return handler


class RateLimitFilter(logging.Filter):
    """At most ``burst`` records per (logger, level, message template) per ``interval``
    seconds; the rest are counted, and :meth:`flush` logs the count once their interval
    has ended: one line with a count, however many requests or connections tried.

    For the lines a client can cause once per request or connection (refused bodies,
    dropped connections, hypercorn's errors): a flood must not flood the log too.
    """

    def __init__(
        self, interval: float = 10.0, burst: int = 3, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()  # hypercorn logs from the event loop, sinks from threads
        # key -> [window start, records passed, records suppressed, the logger's name]
        self._windows: dict[tuple[str, int, str], list[Any]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_rate_summary", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                if window is not None and window[2]:
                    self._report(key, window[2])
                if window is None and len(self._windows) >= 1024:
                    self._flush_locked(now, everything=True)
                self._windows[key] = [now, 1, 0]
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False

    def reset(self) -> None:
        """Start every budget afresh (a service starting in this process): what the
        windows suppressed so far is reported first."""
        with self._lock:
            self._flush_locked(self._clock(), everything=True)

    def flush(self) -> None:
        """Log the count of every interval that has ended with records suppressed."""
        with self._lock:
            self._flush_locked(self._clock())

    def _flush_locked(self, now: float, *, everything: bool = False) -> None:
        for key, window in list(self._windows.items()):
            if everything or now - window[0] >= self.interval:
                del self._windows[key]
                if window[2]:
                    self._report(key, window[2])

    def _report(self, key: tuple[str, int, str], count: int) -> None:
        name, level, template = key
        logging.getLogger(name).log(
            level,
            "%d more like this were not logged in %g s: %s",
            count,
            self.interval,
            template[:300],
            extra={"_rate_summary": True},
        )

    async def serve_flush(self, *, task_status: Any = None) -> None:
        """Flush every ``interval`` until cancelled (a task of the service's nursery;
        ``nursery.start`` or ``start_soon``). trio is imported here: the commands that
        only configure logging (``streamd journal ...``) never load it."""
        import trio

        if task_status is not None:
            task_status.started()
        while True:
            await trio.sleep(self.interval)
            self.flush()


# The loggers a client can make speak once per request or connection. Installed at
# import: every process that serves HTTP imports this module.
PER_REQUEST_LOGGERS = (
    "streamd.ingest",
    "streamd.http",
    "streamd.http.edge",
    "streamd.http.mtls",
    "streamd.admin",
    "streamd.admin.http",
    "streamd.auth.adobe",
    "streamd.auth.external",
    "streamd.ingest.validation",
)
PER_REQUEST = RateLimitFilter()
for _name in PER_REQUEST_LOGGERS:
    logging.getLogger(_name).addFilter(PER_REQUEST)


def current_format() -> str:
    """The format this process's log lines have, for a child process that shares its
    stderr (an ingest worker, a kafka sink's producer process): every line alike."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return "json"
    return "text" if logging.getLogger().handlers else "auto"
