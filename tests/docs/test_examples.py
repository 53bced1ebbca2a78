"""Every shell and configuration example of README.md and docs/ is executed.

Each page runs as a reader would follow it (tests/docs/_pages.py); a fenced block
without a marker fails, so no example drifts unseen (docs/README.md, "How the examples
are tested").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs._markdown import (
    KINDS,
    REPO,
    Block,
    MarkerError,
    blocks,
    output_matches,
    pages,
)
from tests.docs._pages import PageRun

PAGE_IDS = [str(p.relative_to(REPO)) for p in pages()]


def test_every_fenced_block_is_marked() -> None:
    problems = []
    for page in pages():
        try:
            blocks(page)
        except MarkerError as exc:
            problems.append(str(exc))
    assert problems == []


def test_the_markers_are_documented() -> None:
    guide = (REPO / "docs" / "README.md").read_text()
    for kind in KINDS:
        assert f"<!-- doctest: {kind}" in guide, kind


@pytest.mark.parametrize("page", pages(), ids=PAGE_IDS)
def test_the_examples_of_the_page_run(page: Path, tmp_path: Path) -> None:
    page_blocks: list[Block] = blocks(page)
    with PageRun(tmp_path / "reader") as run:
        for block in page_blocks:
            run.execute(block)


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        ('{"accepted":6,"duplicates":0}\n', '{"accepted":6,"duplicates":0}\n', True),
        ('{"accepted":6,"duplicates":0}\n', '{"accepted":5,"duplicates":1}\n', False),
        ("ok: all ... ids\n", "ok: all 2000 acknowledged ids\n", True),
        ("a\n...\nz\n", "a\nb\nc\nz\n", True),
        ("a\n...\nz\n", "a\nz\n", True),
        ("a\n...\nz\n", "a\nb\n", False),
        ("a ... b\n", "a x\ny b\n", False),  # "..." in a line stays on the line
        ("a\n", "a   \n\n", True),  # trailing spaces and blank lines do not count
        ("a.b\n", "axb\n", False),  # the rest is literal
    ],
)
def test_output_matching(expected: str, actual: str, matches: bool) -> None:
    assert output_matches(expected, actual) is matches
