"""The ``streamd`` command: serve, check-config, journal stats."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson
import trio

from streamd import __version__
from streamd.auth import read_token_file
from streamd.emit import cli as emit_cli
from streamd.errors import ConfigError, JournalError, StreamdError
from streamd.journal import journal_stats
from streamd.service import load_config, serve
from streamd.service.config import Config, default_data_dir


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("STREAMD_CONFIG"),
        help="TOML configuration file (default: $STREAMD_CONFIG, else built-in defaults)",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        help="address to listen on, overrides server.listen (repeatable; port 0 picks one)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory holding the journal, overrides data_dir "
        "(default: $STATE_DIRECTORY, else ./streamd-data)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="API token file (one token per line; created with a new token if missing), "
        "overrides tokens.files",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (each has help; a test checks it)."""
    parser = argparse.ArgumentParser(
        prog="streamd", description="A durable receiver for Adobe Marketo Engage data streams."
    )
    parser.add_argument("--version", action="version", version=f"streamd {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("STREAMD_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info, or $STREAMD_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_serve = sub.add_parser("serve", help="receive deliveries and journal them (the daemon)")
    _config_flags(p_serve)

    p_check = sub.add_parser(
        "check-config", help="validate the configuration and token files without starting"
    )
    _config_flags(p_check)

    p_journal = sub.add_parser("journal", help="inspect the journal (read-only)")
    jsub = p_journal.add_subparsers(dest="journal_command", metavar="SUBCOMMAND")
    jsub.required = True
    p_stats = jsub.add_parser(
        "stats", help="counts by stream and type, duplicates, time range, file sizes"
    )
    p_stats.add_argument("--data-dir", metavar="DIR", help="data directory (default: as for serve)")
    p_stats.add_argument("--journal", metavar="FILE", help="journal file (overrides --data-dir)")
    p_stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    emit_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamd`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args)
    except BaseExceptionGroup as group:
        # trio nurseries wrap errors in groups; report ours as the one line they are.
        ours, rest = group.split(StreamdError)
        if ours is None or rest is not None:
            raise
        return _report(_first_leaf(ours))
    except StreamdError as exc:
        return _report(exc)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "emit":
        return emit_cli.run(args)
    return _journal_stats(args)


def _first_leaf(group: BaseExceptionGroup[StreamdError]) -> StreamdError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _report(exc: StreamdError) -> int:
    if isinstance(exc, ConfigError):
        print(f"streamd: configuration error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, JournalError):
        print(f"streamd: journal error: {exc}", file=sys.stderr)
        return 1
    print(f"streamd: error: {exc}", file=sys.stderr)
    return 1


def _load(args: argparse.Namespace) -> Config:
    return load_config(
        args.config, listen=args.listen, data_dir=args.data_dir, token_file=args.token_file
    )


def _announce(line: str) -> None:
    print(line, flush=True)


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        trio.run(partial(serve, config, announce=_announce))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled by the service
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    for source in config.sources:
        for path in config.token_files(source):
            # serve creates a missing global token file (default or tokens.files);
            # a source's own token_files must exist.
            creatable = path == config.default_token_file or path in config.tokens.files
            if creatable and not os.path.exists(path):
                continue
            read_token_file(path)
    where = args.config or "<defaults>"
    print(
        f"{where}: ok — listen {', '.join(config.server.listen)}; data dir {config.data_dir}; "
        f"synchronous={config.journal.synchronous}; sources: "
        + ", ".join(f"{s.name} at {s.path}" for s in config.sources)
    )
    return 0


def _journal_stats(args: argparse.Namespace) -> int:
    path = args.journal or os.path.join(args.data_dir or default_data_dir(), "journal.db")
    stats = journal_stats(path)
    if args.json:
        sys.stdout.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(_format_stats(stats))
    return 0


def _format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"journal     {stats['path']} (schema {stats['schema_version']})",
        f"events      {stats['events']}  "
        + "  ".join(f"{k}={v}" for k, v in stats["by_stream"].items()),
        f"deliveries  {stats['deliveries']}  "
        + "  ".join(f"{k}={v}" for k, v in stats["deliveries_by_source"].items()),
        f"duplicates  {stats['duplicates']} of {stats['events_received']} events received",
    ]
    if stats["first"]:
        lines.append(
            f"received    {stats['first']['received_at']} (seq {stats['first']['seq']}) .. "
            f"{stats['last']['received_at']} (seq {stats['last']['seq']})"
        )
        occurred = stats["occurred_range"]
        lines.append(f"occurred    {occurred['min']} .. {occurred['max']}")
    sizes = stats["file_bytes"]
    lines.append("file bytes  " + "  ".join(f"{name}={size}" for name, size in sizes.items()))
    if stats["by_type"]:
        lines.append("by type:")
        width = max(len(str(t["type"])) for t in stats["by_type"])
        for row in stats["by_type"]:
            lines.append(f"  {row['events']:>10}  {row['stream']:<12} {row['type']!s:<{width}}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
