"""Child processes of the multi-receiver tests (the servers: tests/engines/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system._harness import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path / "run")
    try:
        yield procs
    finally:
        procs.close()
