"""The hostile-input and fault suite: bounded under ``make test``, long under ``make soak``.

Every test here sizes its load with :func:`scale`: the bounded figure in ``make test``
(CI), the long one when ``STREAMD_SOAK=1`` (``make soak``, never in CI).
"""

from __future__ import annotations

import os
from typing import TypeVar

from tests.integration.conftest import server, start_server

__all__ = ["scale", "server", "soak", "start_server"]
T = TypeVar("T")


def soak() -> bool:
    """True under ``make soak`` (``STREAMD_SOAK=1``): the long mode."""
    return os.environ.get("STREAMD_SOAK", "") not in ("", "0")


def scale(bounded: T, long: T) -> T:
    """``bounded`` in ``make test``, ``long`` under ``make soak``."""
    return long if soak() else bounded
