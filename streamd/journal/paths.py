"""Where a journal lives: the default data directory, and the journal file in one."""

from __future__ import annotations

import os

JOURNAL_FILE = "journal.db"


def default_data_dir() -> str:
    """``$STATE_DIRECTORY`` (set by systemd's StateDirectory=) or ``./streamd-data``."""
    state = os.environ.get("STATE_DIRECTORY", "")
    return state.split(":")[0] if state else "./streamd-data"


def journal_in(data_dir: str | None) -> str:
    """The journal file of ``data_dir`` (None: the default data directory)."""
    return os.path.join(data_dir or default_data_dir(), JOURNAL_FILE)
