"""Shared fixtures: the contract's example deliveries, fresh data directories and child
processes reaped at the end of each test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.system._harness import Processes

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
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Starts child processes (``streamd serve``, ``streamd emit``, the engines' servers);
    kills and reaps every one still running when the test ends."""
    from tests.system._harness import Processes  # which imports this module

    procs = Processes(tmp_path / "run")
    try:
        yield procs
    finally:
        procs.close()


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


@pytest.fixture(autouse=True)
def _root_log_level() -> Iterator[None]:
    """The root logger's level as each test found it: a test that runs the CLI in-process
    (``--log-level error``) left it at ERROR, and child processes started later in that
    worker (the kafka producer process takes the daemon's level) logged nothing below."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


# `make test` runs the suite in three pytest-xdist workers (most tests wait on child
# processes, sockets and fsync, not on a core). The longest tests are handed out first
# so that none starts last and runs alone; the engine tests share one worker, so one set
# of servers (PostgreSQL, a 3-node NATS cluster, the Kafka broker) is started, not three.
_LONGEST_FIRST = (
    "tests/hostile/test_powercut.py",
    "tests/system/test_dist.py",
    "tests/interop/test_sdk_journal.py",
    "tests/interop/test_sdk_signatures.py",
    "tests/hostile/test_fuzz.py",
    "tests/hostile/test_connections.py",
    "tests/system/test_forward_chain.py",
    "tests/docs/test_examples.py",
    "tests/unit/test_inspect_export.py",
    "tests/system/test_bench_workers.py",
    "tests/system/test_crash.py",
    "tests/unit/test_decode_errors.py",
    "tests/system/test_pull_crash.py",
    "tests/hostile/test_fsize.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return _LONGEST_FIRST.index(path) if path in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order
    for item in items:
        if item.nodeid.startswith("tests/engines/"):
            item.add_marker(pytest.mark.xdist_group("engines"))
