"""The ``streamd`` command: serve, check-config, and the ``journal`` inspection commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from streamd import __version__
from streamd.errors import ConfigError, JournalError, StreamdError, UsageError
from streamd.inspect import cli as inspect_cli

if TYPE_CHECKING:
    from streamd.service.config import Config

# trio, hypercorn and the service are imported only by the commands that run them:
# `streamd journal ...` starts in a fraction of the time (bench/RESULTS.md, startup).


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
        "--admin-listen",
        metavar="HOST:PORT",
        action="append",
        help="admin listener address, overrides admin.listen and turns it on (repeatable)",
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
    inspect_cli.register(jsub)
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
    except BrokenPipeError:
        # `streamd journal grep ... | head`: the reader has what it wanted.
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        if args.command == "journal":
            _silence_stdout()
            return 130
        raise
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
    return inspect_cli.run(args)


def _silence_stdout() -> None:
    # Python flushes stdout at exit; a closed pipe would print a second error then.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _first_leaf(group: BaseExceptionGroup[StreamdError]) -> StreamdError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _report(exc: StreamdError) -> int:
    if isinstance(exc, ConfigError):
        print(f"streamd: configuration error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, UsageError):
        print(f"streamd: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, JournalError):
        print(f"streamd: journal error: {exc}", file=sys.stderr)
        return 1
    print(f"streamd: error: {exc}", file=sys.stderr)
    return 1


def _load(args: argparse.Namespace) -> Config:
    from streamd.service import load_config

    return load_config(
        args.config,
        listen=args.listen,
        data_dir=args.data_dir,
        token_file=args.token_file,
        admin_listen=args.admin_listen,
    )


def _announce(line: str) -> None:
    print(line, flush=True)


def _serve(args: argparse.Namespace) -> int:
    import trio

    from streamd.service import serve

    config = _load(args)
    try:
        trio.run(partial(serve, config, announce=_announce))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled by the service
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from streamd.auth import read_token_file

    config = _load(args)
    for source in config.sources:
        for path in config.token_files(source):
            # serve creates a missing global token file (default or tokens.files);
            # a source's own token_files must exist.
            creatable = path == config.default_token_file or path in config.tokens.files
            if creatable and not os.path.exists(path):
                continue
            read_token_file(path)
    if config.admin.addresses and os.path.exists(config.admin_token_file):
        read_token_file(config.admin_token_file)  # serve creates it when missing
    where = args.config or "<defaults>"
    print(
        f"{where}: ok — listen {', '.join(config.server.listen)}; data dir {config.data_dir}; "
        f"synchronous={config.journal.synchronous}; sources: "
        + ", ".join(f"{s.name} at {s.path}" for s in config.sources)
        + "; admin "
        + (", ".join(config.admin.addresses) or "off")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
