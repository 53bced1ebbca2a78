"""What a process imports before it serves (ARCHITECTURE.md, "What a process imports").

An ingest worker is a second interpreter: every module it loads is memory the daemon
pays again per worker. It imports the ingest side only: no admin app, drain, journal
inspection or worker pool, and no HTTP client, JWT library or cryptography until a
source of its configuration uses one. The main process likewise loads httpx, jwt and
cryptography only for the sources, sinks and pulls that need them.

The command line reads a journal without the server side, the emulator's sender or the
operator's operations.

Each case runs in a fresh interpreter: this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.journals import fixture_journal

# Loaded on first use only, in the worker and in the daemon alike.
ON_DEMAND = ("httpx", "jwt", "cryptography")
# Never in a worker: the main process's side.
MAIN_ONLY = (
    "streamd.admin",
    "streamd.drain",
    "streamd.inspect",
    "streamd.ops",
    "streamd.ingest.pull",
    "streamd.service.workers",
    "streamd.service.startup",
    "click",
    "pygments",
)


def loaded_by(module: str) -> set[str]:
    """The top modules and streamd modules a fresh interpreter has after ``import module``."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout))


def present(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


def test_an_ingest_worker_imports_the_ingest_side_only() -> None:
    modules = loaded_by("streamd.service.worker")
    assert "streamd.ingest.app" in modules and "hypercorn" in modules  # what it serves with
    assert present(modules, ON_DEMAND + MAIN_ONLY) == []


def test_the_daemon_loads_no_http_client_jwt_or_cryptography_before_a_source_needs_one() -> None:
    modules = loaded_by("streamd.service.run")
    assert "streamd.admin" in modules and "streamd.drain" in modules
    assert present(modules, ON_DEMAND) == []


@pytest.mark.parametrize(
    "module",
    [
        "streamd.auth.adobe",
        "streamd.auth.external",
        "streamd.auth.client_cert",
        "streamd.auth.ims",
        "streamd.ingest.validation",
        "streamd.ingest.pull",
        "streamd.drain.sinks.http",
    ],
)
def test_the_modules_that_use_them_import_them_where_they_are_used(module: str) -> None:
    assert present(loaded_by(module), ON_DEMAND) == []


# The server side, the emulator's sender and the operator's operations: what reading a
# journal from the command line never needs.
NOT_FOR_READING = (
    "trio",
    "hypercorn",
    "h11",
    "httpx",
    "streamd.drain",
    "streamd.ops",
    "streamd.emit.sender",
    "streamd.service.run",
)


@pytest.mark.parametrize(
    "argv",
    [
        ["journal", "stats"],
        ["journal", "grep", "--count"],
        ["journal", "verify"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_reading_a_journal_from_the_command_line_loads_no_server_side(
    tmp_path: Path, argv: list[str]
) -> None:
    """Every command's flags are parsed by one parser; the modules behind ``emit``,
    ``sinks`` and ``serve`` are loaded only by the commands that run them."""
    journal = fixture_journal(tmp_path / "journal.db")
    code = (
        "import json, sys\n"
        "from streamd.cli import main\n"
        f"status = main({[*argv, '--journal', str(journal)]!r})\n"
        "print(json.dumps([status, sorted(sys.modules)]), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    status, modules = json.loads(done.stderr.strip().splitlines()[-1])
    assert status == 0, done.stderr
    assert done.stdout  # it answered
    assert present(set(modules), NOT_FOR_READING) == []
