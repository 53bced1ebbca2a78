"""The ``streamd journal`` subcommands: their flags (each with help) and dispatch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import IO

from streamd.inspect import commands
from streamd.inspect.filters import CLOCKS, DEFAULT_CLOCK
from streamd.inspect.output import FORMATS

Command = Callable[[argparse.Namespace, IO[str]], int]


def _journal_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="data directory (default: as for serve)")
    parser.add_argument("--journal", metavar="FILE", help="journal file (overrides --data-dir)")


def _format_flag(parser: argparse.ArgumentParser, choices: tuple[str, ...] = FORMATS) -> None:
    parser.add_argument(
        "--format",
        choices=choices,
        default="auto",
        help="output format (default auto: a table on a terminal, JSON Lines otherwise)",
    )


def add_filter_flags(parser: argparse.ArgumentParser) -> None:
    """The event filters shared by grep, find, tail, export and stats."""
    g = parser.add_argument_group("filters (repeat a flag or use a,b for alternatives)")
    g.add_argument(
        "--stream",
        action="append",
        metavar="NAME",
        help="activity, audit, notification or other",
    )
    g.add_argument(
        "--type",
        action="append",
        metavar="GLOB",
        help="event type, exact or a glob ('*.openemail', 'com.adobe.platform.marketo.audit.*')",
    )
    g.add_argument(
        "--activity-type",
        action="append",
        metavar="ID|NAME",
        help="activity type id (13) or name ('Change Data Value')",
    )
    g.add_argument("--lead", action="append", metavar="ID", help="lead id")
    g.add_argument("--munchkin", action="append", metavar="ID", help="Munchkin id (123-ABC-456)")
    g.add_argument("--source", action="append", metavar="NAME", help="source name (endpoint)")
    g.add_argument(
        "--since",
        metavar="WHEN",
        help="at or after (received_at unless --clock occurred): a duration back from now "
        "(2h, 30d, 1h30m, PT2H, -P1D) or an ISO 8601 time (2026-11-01, 2026-11-01T08:00Z; "
        "no zone means UTC)",
    )
    g.add_argument(
        "--until", metavar="WHEN", help="before this time (same clock and forms as --since)"
    )
    g.add_argument(
        "--clock",
        choices=CLOCKS,
        default=DEFAULT_CLOCK,
        help="which time --since/--until apply to: when streamd received the event "
        f"(received_at, the default) or when it happened (occurred_at); default {DEFAULT_CLOCK}",
    )
    g.add_argument(
        "--where",
        action="append",
        metavar="PATH=GLOB",
        help="a field inside the event's JSON matches a glob: 'data.primaryAttributeValue=Spring*' "
        "or a JSON path ('$.data.attributes[0].value=42')",
    )


def register(jsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add every ``streamd journal`` subcommand to ``jsub``."""
    _register_reading(jsub)
    _register_one_and_export(jsub)
    _register_maintenance(jsub)


def _register_reading(jsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """stats, grep, find, tail."""
    p = jsub.add_parser(
        "stats",
        help="counts by stream, type, Munchkin id and source in a window; rate, duplicates, sizes",
    )
    _journal_flags(p)
    add_filter_flags(p)
    _format_flag(p)
    p.add_argument("--json", action="store_true", help="one indented JSON document")
    p.set_defaults(run=_stats)

    for name, what in (
        ("grep", "events matching filters, as a table or JSON Lines (--count: how many)"),
        ("find", "the same as grep"),
    ):
        p = jsub.add_parser(name, help=what, description=what)
        _journal_flags(p)
        add_filter_flags(p)
        _format_flag(p)
        p.add_argument("--limit", type=_limit, metavar="N", help="at most N events (oldest first)")
        p.add_argument("--count", action="store_true", help="print only how many events match")
        p.set_defaults(run=commands.cmd_grep)

    p = jsub.add_parser("tail", help="the newest events; -f follows new ones as they commit")
    _journal_flags(p)
    add_filter_flags(p)
    _format_flag(p)
    p.add_argument(
        "-n",
        "--lines",
        type=int,
        default=10,
        metavar="N",
        help="how many of the newest (default 10)",
    )
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until interrupted"
    )
    p.set_defaults(run=commands.cmd_tail)


def _register_one_and_export(jsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """show, export."""
    p = jsub.add_parser(
        "show", help="one event: its columns, its JSON as received, the delivery that brought it"
    )
    _journal_flags(p)
    _format_flag(p)
    p.add_argument(
        "id", metavar="ID", help="the event's seq, or its event id (key:ID forces an id)"
    )
    p.set_defaults(run=commands.cmd_show)

    p = jsub.add_parser(
        "export", help="matching events as JSON Lines or CSV, streamed in constant memory"
    )
    _journal_flags(p)
    add_filter_flags(p)
    p.add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl", help="jsonl (default) or csv"
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write here (replaced only once the export is complete); default stdout",
    )
    p.add_argument("--limit", type=_limit, metavar="N", help="at most N events (oldest first)")
    p.add_argument(
        "--max-rate",
        type=_max_rate,
        metavar="N",
        help="at most N events/s (0: no limit). Default: 20000 while a streamd is ingesting "
        "into this journal (so the export leaves it the CPU and disk), else no limit",
    )
    p.set_defaults(run=_export)


def _register_maintenance(jsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """verify, backup, query."""
    p = jsub.add_parser(
        "verify",
        help="integrity check plus streamd's invariants; exit 0 when healthy, 1 when not",
    )
    _journal_flags(p)
    _format_flag(p)
    p.add_argument(
        "--quick",
        action="store_true",
        help="quick_check and the delivery invariants only (skips the per-row and duplicate-key "
        "checks)",
    )
    p.set_defaults(run=_verify)

    p = jsub.add_parser(
        "backup", help="an online, consistent copy of the journal, verified before it is kept"
    )
    _journal_flags(p)
    p.add_argument(
        "dest", metavar="DEST", help="new file (or a directory: journal-<UTC time>.db in it)"
    )
    p.add_argument(
        "--quick", action="store_true", help="verify the copy with verify --quick's checks"
    )
    p.set_defaults(run=_backup)

    p = jsub.add_parser("query", help="run one read-only SQL statement against the journal")
    _journal_flags(p)
    _format_flag(p)
    p.add_argument("sql", metavar="SQL", help="a SELECT (or read-only PRAGMA); writes are refused")
    p.set_defaults(run=commands.cmd_query)


def _stats(args: argparse.Namespace, out: IO[str]) -> int:
    from streamd.inspect.stats import cmd_stats  # stats imports commands: no cycle at load

    return cmd_stats(args, out)


def _max_rate(text: str) -> int:
    if not text.isdigit() or int(text) > 10_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate from 0 to 10000000 events/s")
    return int(text)


def _export(args: argparse.Namespace, out: IO[str]) -> int:
    from streamd.inspect.export import cmd_export

    return cmd_export(args, out)


def _verify(args: argparse.Namespace, out: IO[str]) -> int:
    from streamd.inspect.verify import cmd_verify

    return cmd_verify(args, out)


def _backup(args: argparse.Namespace, out: IO[str]) -> int:
    from streamd.inspect.backup import cmd_backup

    return cmd_backup(args, out)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10**12:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number from 1 to 10^12")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """Run the chosen journal subcommand, writing to stdout."""
    command: Command = args.run
    return command(args, sys.stdout)
