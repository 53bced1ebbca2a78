"""Shared fixtures: the contract's example deliveries and fresh data directories."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "contract" / "fixtures"


def fixture_bytes(name: str) -> bytes:
    """The exact bytes of one example delivery from the contract."""
    return (FIXTURES / f"{name}.json").read_bytes()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh, empty data directory."""
    path = tmp_path / "data"
    path.mkdir()
    return path
