"""Fixtures of the interop suite: Adobe's Node SDK, pinned and installed once per session.

Without node, npm or the npm registry the suite cannot run: it skips and says why, and
under CI (``CI`` set) it fails instead, so a green CI run always ran it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ._sdk import Node, SdkMissing, install


@pytest.fixture(scope="session")
def sdk_installed() -> None:
    try:
        install()
    except SdkMissing as exc:
        reason = f"Adobe's SDK is not available for the interop suite: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def node(sdk_installed: None, tmp_path: Path) -> Node:
    """Runs the suite's node scripts (each in a fresh directory under ``tmp_path``)."""
    return Node(tmp_path / "node")


# npm's tree is no place to look for tests.
collect_ignore_glob = ["node_modules"]
