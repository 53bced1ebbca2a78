"""Every relative link of README.md and docs/ points at a file that exists, and at a
heading that exists in it: sections moved between pages must not leave links behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs._markdown import REPO, pages

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(`{3,}|~{3,})")


def _prose(text: str) -> list[str]:
    """The lines outside fenced blocks."""
    lines, fence = [], ""
    for line in text.splitlines():
        opening = _FENCE.match(line)
        if fence:
            if line.startswith(fence):
                fence = ""
        elif opening:
            fence = opening.group(1)
        else:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in _prose(page.read_text()):
        match = re.match(r"^#{1,6} (.*)$", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("`GET /metrics`: Prometheus", "get-metrics-prometheus"),
        ("`streamd journal grep` (and `find`)", "streamd-journal-grep-and-find"),
        ("The derived index file (`journal.dedup.db`)", "the-derived-index-file-journaldedupdb"),
        ("Signed sources (Adobe I/O Events)", "signed-sources-adobe-io-events"),
        ("Pull sources: Adobe's Journaling API", "pull-sources-adobes-journaling-api"),
    ],
)
def test_slug(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for line in _prose(page.read_text()):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert broken == [], f"{page.relative_to(REPO)}: {broken}"
