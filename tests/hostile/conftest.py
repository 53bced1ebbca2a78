"""The hostile-input and fault suite: bounded under ``make test``, long under ``make soak``.

Every test here sizes its load with :func:`scale`: the bounded figure in ``make test``
(CI), the long one when ``STREAMD_SOAK=1`` (``make soak``, never in CI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.conftest import server, start_server
from tests.system._harness import Processes

__all__ = ["processes", "scale", "server", "soak", "start_server"]
T = TypeVar("T")


def soak() -> bool:
    """True under ``make soak`` (``STREAMD_SOAK=1``): the long mode."""
    return os.environ.get("STREAMD_SOAK", "") not in ("", "0")


def scale(bounded: T, long: T) -> T:
    """``bounded`` in ``make test``, ``long`` under ``make soak``."""
    return long if soak() else bounded


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Starts child processes; kills and reaps every one still running when the test ends."""
    procs = Processes(tmp_path / "run")
    try:
        yield procs
    finally:
        procs.close()
