"""The one exception hierarchy of streamd.

Each layer translates foreign errors at its edge (``raise X(...) from exc``).
Errors that reach the HTTP edge carry ``status_hint``: the status code the
ingest app answers with, so the policy lives next to the cause.
"""

from __future__ import annotations

from typing import Any


class StreamdError(Exception):
    """Base of every error streamd raises on purpose."""

    status_hint: int = 503
    # For the 503s a sender gets: a short, stable label (metrics, logs).
    reason: str = "error"


class ConfigError(StreamdError):
    """Raised when a configuration file or flag is invalid; names file, key and problem."""

    status_hint = 500


class PayloadError(StreamdError):
    """Raised when a request body is not JSON or not any known delivery shape."""

    status_hint = 400


class TooManyEvents(PayloadError):
    """Raised when a body carries more events than ``server.max_events_per_request`` (413)."""

    status_hint = 413


class JournalError(StreamdError):
    """Raised when the journal cannot be opened, read or written."""

    status_hint = 503
    reason = "journal_error"


class JournalHeld(JournalError):
    """Raised when a change to a journal file is refused because a running streamd holds
    its writer lock (the change must go through that daemon)."""


def first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first exception of a (nested) exception group, as trio's nurseries raise them."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class JournalBusy(JournalError):
    """Raised when the journal cannot take a batch now (queue full, low disk, stopping)."""

    def __init__(self, message: str, retry_after: int = 5, reason: str = "journal_busy") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason


class JournalClosed(JournalBusy):
    """Raised when a batch is submitted after the journal began to close."""

    def __init__(self, message: str, retry_after: int = 10) -> None:
        super().__init__(message, retry_after, "shutting_down")


class CommitTimeout(JournalBusy):
    """Raised when a batch was not committed within the commit latency budget."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, retry_after, "commit_budget")


class UsageError(StreamdError):
    """Raised when a command-line argument, an input file or a query parameter is unusable.

    The one class for every command (``streamd emit`` included): exit status 2, HTTP 400.
    """

    status_hint = 400
