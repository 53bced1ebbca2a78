"""Shared fixtures: the contract's example deliveries and fresh data directories."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The contract's own copy when it sits beside the repository (as in CI); else the copy
# vendored in tests/fixtures/contract (test_vendored_fixtures_match_the_contract keeps
# the two equal whenever both exist).
_SHARED = REPO.parent / "shared" / "contract" / "fixtures"
VENDORED = REPO / "tests" / "fixtures" / "contract"
FIXTURES = _SHARED if _SHARED.is_dir() else VENDORED


def fixture_bytes(name: str) -> bytes:
    """The exact bytes of one example delivery from the contract."""
    return (FIXTURES / f"{name}.json").read_bytes()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh, empty data directory."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _empty_working_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test runs in an empty current directory: none may depend on what is in the
    clone's (``make run`` leaves ``./streamd-data`` there, with a running daemon's files)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
