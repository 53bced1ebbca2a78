"""streamd: a durable receiver for Adobe Marketo Engage data streams."""

from streamd.errors import (
    CommitTimeout,
    ConfigError,
    JournalBusy,
    JournalClosed,
    JournalError,
    PayloadError,
    StreamdError,
    TooManyEvents,
)

__version__ = "0.1.0"

__all__ = [
    "CommitTimeout",
    "ConfigError",
    "JournalBusy",
    "JournalClosed",
    "JournalError",
    "PayloadError",
    "StreamdError",
    "TooManyEvents",
    "__version__",
]
