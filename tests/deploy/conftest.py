"""Fixtures of the deploy/ tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system._harness import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Starts child processes; kills and reaps every one still running when the test ends."""
    procs = Processes(tmp_path / "run")
    try:
        yield procs
    finally:
        procs.close()
