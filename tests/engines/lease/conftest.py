"""A PostgreSQL server for the lease tests (once per session), and child processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines._postgres import PostgresServer, available
from tests.system._harness import Processes


@pytest.fixture(scope="session")
def lease_pg() -> Iterator[PostgresServer]:
    why = available()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is needed here: {why}")
        pytest.skip(why)
    with PostgresServer() as pg:
        yield pg


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path / "run")
    try:
        yield procs
    finally:
        procs.close()
