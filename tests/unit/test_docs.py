"""The public surface is documented where each part of it lives: every config key in
docs/configuration.md, every CLI command and flag in docs/cli.md (the journal commands'
flags in docs/journal.md or docs/pulls.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec
import pytest

from streamd.cli import build_parser
from streamd.service.config import Config

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
CLI = (DOCS / "cli.md").read_text()
# Where a command's flags may be described, besides docs/cli.md.
FLAG_PAGES = {"streamd journal": ("journal.md", "pulls.md")}


def _struct_of(annotation: object) -> type[msgspec.Struct] | None:
    """The Struct inside ``T``, ``T | None`` or ``list[T]`` (None for plain values)."""
    info = msgspec.inspect.type_info(annotation)
    if isinstance(info, msgspec.inspect.UnionType):
        inner = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        info = inner[0] if len(inner) == 1 else info
    if isinstance(info, msgspec.inspect.ListType):
        info = info.item_type
    if isinstance(info, msgspec.inspect.StructType):
        return info.cls
    return None


def config_keys(struct: type[msgspec.Struct] = Config, prefix: str = "") -> list[str]:
    """Every key of the configuration file, as docs/configuration.md names it."""
    keys = []
    for f in msgspec.structs.fields(struct):
        name = f"{prefix}{f.name}"
        inner = _struct_of(f.type)
        info = msgspec.inspect.type_info(f.type)
        if inner is None:
            keys.append(name)
            continue
        if isinstance(info, msgspec.inspect.ListType):
            keys.append(name)  # a list of tables: itself, then each key as name[].key
            keys += config_keys(inner, f"{name}[].")
        else:
            keys += config_keys(inner, f"{name}.")
    return keys


@pytest.mark.parametrize("key", config_keys())
def test_every_config_key_is_in_the_reference(key: str) -> None:
    assert f"\n| `{key}` |" in CONFIGURATION, (
        f"config key {key} is not a row of docs/configuration.md's table"
    )


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    assert helps.get(name), f"{prefix} {name} has no help text"
                    found.append((f"{prefix} {name}", sub))
                    walk(f"{prefix} {name}", sub)

    walk("streamd", build_parser())
    return found


@pytest.mark.parametrize(("command", "parser"), _commands(), ids=lambda v: str(v))
def test_every_command_is_documented_with_help(
    command: str, parser: argparse.ArgumentParser
) -> None:
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return  # a group of commands: its leaves are checked
    rows = [line for line in CLI.splitlines() if line.startswith("| ")]
    assert any(f"`{command}" in row for row in rows), (
        f"{command} is not in docs/cli.md's table of commands"
    )
    names = ["cli.md"] + [
        page
        for prefix, pages in FLAG_PAGES.items()
        if command.startswith(prefix + " ")
        for page in pages
    ]
    texts = [(DOCS / name).read_text() for name in names]
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            flag = action.option_strings[0]
            assert action.help, f"{command} {flag} has no help"
            assert any(f"`{flag}" in text for text in texts), (
                f"{command} {flag} is not documented in docs/{' or docs/'.join(names)}"
            )


def test_quick_start_is_exactly_two_commands() -> None:
    start = README.index("## Quick start")
    block = README[start:].split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == [
        "make run",
        "make test",
    ]


def test_changelog_and_architecture_exist() -> None:
    assert "## " in (REPO / "CHANGELOG.md").read_text()
    assert "journal.dedup.db" in (REPO / "ARCHITECTURE.md").read_text()


def test_vendored_fixtures_match_the_contract() -> None:
    from tests.conftest import VENDORED

    shared = REPO.parent / "shared" / "contract" / "fixtures"
    if not shared.is_dir():
        pytest.skip("no ../shared beside the repository; the vendored copy is used")
    names = sorted(p.name for p in shared.iterdir())
    assert names == sorted(p.name for p in VENDORED.iterdir())
    for name in names:
        assert (shared / name).read_bytes() == (VENDORED / name).read_bytes(), name


JOURNAL_COMMANDS = [
    "stats", "grep", "find", "tail", "show", "query", "export", "verify", "backup", "pull-reset",
]  # fmt: skip


def test_every_journal_subcommand_has_help_and_a_section() -> None:
    commands = dict(_commands())
    found = sorted(c.split()[-1] for c in commands if c.startswith("streamd journal "))
    assert found == sorted(JOURNAL_COMMANDS)
    journal = (DOCS / "journal.md").read_text()
    for name in JOURNAL_COMMANDS:
        parser = commands[f"streamd journal {name}"]
        assert parser.format_help().strip()
        heading = f"### `streamd journal {name}`"
        if name in ("grep", "find"):
            heading = "### `streamd journal grep` (and `find`)"
        assert f"\n{heading}\n" in journal, name
