"""streamd/core (and the drain's policy, routing and presets) is sans-IO: no trio,
sqlite3, sockets, hypercorn, threads or clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "streamd" / "core"
DRAIN = CORE.parent / "drain"
SANS_IO_DRAIN = ("policy.py", "routing.py", "presets.py")
FORBIDDEN_MODULES = {
    "trio",
    "anyio",
    "asyncio",
    "sqlite3",
    "sqlite_utils",
    "socket",
    "ssl",
    "hypercorn",
    "httpx",
    "threading",
    "time",
    "os",
    "subprocess",
}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}


def _core_files() -> list[Path]:
    files = sorted(CORE.glob("*.py"))
    assert files, "no core modules found"
    drain = [DRAIN / name for name in SANS_IO_DRAIN]
    assert all(p.exists() for p in drain)
    return files + drain


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_core_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN_MODULES, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_core_module_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in FORBIDDEN_CALLS, (
                f"{path.name}:{node.lineno} calls .{node.func.attr}(): time must be passed in"
            )
