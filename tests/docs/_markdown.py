"""The fenced blocks of README.md and docs/*.md, their markers, and output matching.

Every fenced block carries a marker on the line before it, an HTML comment that GitHub
does not render (docs/README.md, "How the examples are tested", is the reference):

    <!-- doctest: run -->                     a shell block, run against the page's streamd
    <!-- doctest: run; stdin: TEXT -->        ... with TEXT on its standard input
    <!-- doctest: run; interrupt -->          ... that runs until Ctrl-C: interrupted once it
                                              printed a line
    <!-- doctest: output -->                  the stdout of the run block before it (of a
                                              check-config block: its warnings)
    <!-- doctest: serve -->                   one `[VAR=value ...] make run`: the page's
                                              streamd is restarted so
    <!-- doctest: daemon-output -->           what the page's streamd printed on stdout
    <!-- doctest: check-config[; file: NAME][; creates: PATH=KIND, ...][; warns] -->
                                              a configuration: streamd check-config must
                                              accept it, without a warning (with `warns`:
                                              with one)
    <!-- doctest: skip: REASON -->            not executed, and why
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KINDS = ("run", "output", "serve", "daemon-output", "check-config", "skip")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([^`\s]*)")
_MARKER = re.compile(r"^<!-- doctest: (.*?) -->$")
_RUN_OPTIONS = {"stdin", "interrupt"}
_CONFIG_OPTIONS = {"file", "creates", "warns"}


def pages() -> list[Path]:
    """The pages whose examples are executed: README.md and every docs/*.md."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    """One fenced block and what its marker says to do with it."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    kind: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


class MarkerError(ValueError):
    """A block without a marker, or a marker this harness does not understand."""


def _parse_marker(text: str, where: str) -> tuple[str, dict[str, str]]:
    if text.startswith("skip"):  # the rest is the reason, whatever it holds
        reason = text.removeprefix("skip").removeprefix(":").strip()
        if not text.startswith("skip:") or not reason:
            raise MarkerError(f"{where}: 'skip' needs a reason: <!-- doctest: skip: why -->")
        return "skip", {"reason": reason}
    parts = [p.strip() for p in text.split(";")]
    head, options = parts[0], {}
    kind, _, reason = head.partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise MarkerError(f"{where}: unknown doctest kind {kind!r} (expected one of {KINDS})")
    if reason:
        raise MarkerError(f"{where}: {kind!r} takes options after ';', not ':'")
    allowed = {"run": _RUN_OPTIONS, "check-config": _CONFIG_OPTIONS}.get(kind, set())
    for part in parts[1:]:
        name, sep, value = part.partition(":")
        name = name.strip()
        if name not in allowed:
            raise MarkerError(f"{where}: option {name!r} is not one of {kind}'s {allowed}")
        options[name] = value.strip() if sep else ""
    return kind, options


def blocks(page: Path) -> list[Block]:
    """Every fenced block of the page, in order; raises :class:`MarkerError` for one
    without a (valid) marker on the line before it."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    where_page = page.relative_to(REPO)
    while index < len(lines):
        line = lines[index]
        opening = _FENCE.match(line)
        if opening is None:
            if line.lstrip().startswith(("```", "~~~")):
                raise MarkerError(f"{where_page}:{index + 1}: an indented fence; unindent it")
            index += 1
            continue
        fence, lang = opening.groups()
        where = f"{where_page}:{index + 1}"
        marker = _MARKER.match(lines[index - 1]) if index else None
        if marker is None:
            raise MarkerError(
                f"{where}: a fenced block without a marker on the line before it "
                "(<!-- doctest: run -->, ... or <!-- doctest: skip: why -->; docs/README.md)"
            )
        kind, options = _parse_marker(marker.group(1), where)
        end = index + 1
        while end < len(lines) and not lines[end].startswith(fence[0] * len(fence)):
            end += 1
        if end == len(lines):
            raise MarkerError(f"{where}: the block is never closed")
        text = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Block(page, index + 1, lang, text, kind, options))
        index = end + 1
    for before, block in zip([None, *found], found, strict=False):
        if block.kind == "output" and (
            before is None
            or before.kind not in ("run", "check-config")
            or (before.kind == "check-config" and "warns" not in before.options)
        ):
            raise MarkerError(
                f"{block.where}: an output block follows a run block, or a check-config "
                "block with 'warns'"
            )
        if block.kind in ("run", "serve") and block.lang != "sh":
            raise MarkerError(f"{block.where}: a {block.kind} block is a ```sh block")
        if block.kind == "check-config" and block.lang != "toml":
            raise MarkerError(f"{block.where}: a check-config block is a ```toml block")
    return found


def output_pattern(expected: str, aliases: dict[str, str] | None = None) -> re.Pattern[str]:
    """A regex for an expected output: a line ``...`` stands for any number of lines,
    ``...`` inside a line for any text on that line; trailing spaces do not count. Each
    text of ``aliases`` (a documented address) also matches its value (the one the test
    used)."""

    def literal(text: str) -> str:
        pattern = re.escape(text)
        for documented, used in (aliases or {}).items():
            alternatives = f"(?:{re.escape(documented)}|{re.escape(used)})"
            pattern = pattern.replace(re.escape(documented), alternatives)
        return pattern

    parts = []
    for line in expected.rstrip("\n").splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            pieces = line.rstrip().split("...")
            parts.append("[^\n]*?".join(literal(p) for p in pieces) + "\n")
    return re.compile("".join(parts))


def output_matches(expected: str, actual: str, aliases: dict[str, str] | None = None) -> bool:
    """True when ``actual`` is ``expected`` with its ``...`` filled in."""
    normalised = "".join(line.rstrip() + "\n" for line in actual.rstrip("\n").splitlines())
    return output_pattern(expected, aliases).fullmatch(normalised) is not None
