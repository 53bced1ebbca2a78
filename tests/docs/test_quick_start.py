"""The quick start works in a plain clone: nothing outside the repository, and the
``streamd`` of the tour's second terminal is on its PATH the way ``make run`` says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs._markdown import REPO, pages


def test_make_run_prints_how_to_put_streamd_on_path() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make here")
    # -n: print the recipe without running it (nothing is installed, nothing served).
    recipe = subprocess.run(
        ["make", "--no-print-directory", "-n", "run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    [echo] = [line for line in recipe.splitlines() if line.startswith("echo ")]
    printed = subprocess.run(
        ["sh", "-c", echo], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert printed == (
        "streamd: in another terminal, put streamd on your PATH with: "
        f'export PATH="{REPO}/.venv/bin:$PATH"\n'
    )
    assert recipe.splitlines()[-1] == ".venv/bin/streamd serve"  # after the line, serve
    readme = REPO / "README.md"
    assert 'export PATH="…/.venv/bin:$PATH"' in readme.read_text()


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_example_needs_anything_outside_the_clone(page: Path) -> None:
    text = page.read_text()
    assert "../shared" not in text  # the contract's fixtures are in tests/fixtures/contract
    # The examples call `streamd` from the PATH make run's line sets, as a reader would.
    assert not re.search(r"\.venv/bin/streamd\b", text)
