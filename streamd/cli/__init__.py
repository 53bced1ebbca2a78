"""The ``streamd`` command, the front door: every subcommand's arguments are parsed in
this package (``serve``, ``check-config``, ``oauth``; ``sinks`` and ``dlq`` in
:mod:`streamd.cli.operate`), which calls into the layers below and never the other
way round."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import cast

from streamd import __version__
from streamd.cli import emit as emit_cli
from streamd.cli import journal as inspect_cli
from streamd.cli import operate
from streamd.errors import ConfigError, JournalError, StreamdError, UsageError, first_leaf
from streamd.service.config import Config, SourceConfig
from streamd.service.logs import LOG_FORMATS, configure_logging

# The service, the emulator's sender, the operations and httpx are imported by the
# commands that run them: `streamd journal ...` loads no trio, hypercorn or drain and
# starts in about 0.1 s (tests/unit/test_import_weight.py; ARCHITECTURE.md, "What a
# process imports").


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
        default=os.environ.get("STREAMD_LOG_LEVEL") or None,
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: $STREAMD_LOG_LEVEL, else the configuration's "
        "log_level, else info)",
    )
    log_format = os.environ.get("STREAMD_LOG_FORMAT", "auto")
    parser.add_argument(
        "--log-format",
        default=log_format if log_format in LOG_FORMATS else "auto",
        choices=LOG_FORMATS,
        help="log lines as text or JSON; auto: text on a terminal, JSON otherwise "
        "(default: auto, or $STREAMD_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_serve = sub.add_parser("serve", help="receive deliveries and journal them (the daemon)")
    _config_flags(p_serve)

    p_check = sub.add_parser(
        "check-config", help="validate the configuration and token files without starting"
    )
    _config_flags(p_check)

    p_oauth = sub.add_parser("oauth", help="the embedded OAuth issuer's client secrets")
    osub = p_oauth.add_subparsers(dest="oauth_command", metavar="SUBCOMMAND")
    osub.required = True
    osub.add_parser(
        "hash-secret",
        help="read a client secret (prompted on a terminal, else one line of stdin) and print "
        "the hash to put in [oauth] clients",
    )

    p_journal = sub.add_parser("journal", help="inspect the journal (read-only)")
    jsub = p_journal.add_subparsers(dest="journal_command", metavar="SUBCOMMAND")
    jsub.required = True
    inspect_cli.register(jsub)
    operate.register_journal(jsub)
    operate.register(sub)
    emit_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamd`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or "info", args.log_format)
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
        return _report(cast(StreamdError, first_leaf(ours)))
    except StreamdError as exc:
        return _report(exc)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "oauth":
        return _hash_secret()
    if args.command in ("sinks", "dlq"):
        return operate.run(args)
    if args.command == "emit":
        return emit_cli.run(args)
    return inspect_cli.run(args)


def _silence_stdout() -> None:
    # Python flushes stdout at exit; a closed pipe would print a second error then.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _hash_secret() -> int:
    import getpass

    from streamd.auth.issuer import hash_secret

    if sys.stdin.isatty():
        secret = getpass.getpass("client secret: ")
    else:
        secret = sys.stdin.readline().rstrip("\n")
    if len(secret) < 16:
        raise UsageError("oauth hash-secret: a client secret needs at least 16 characters")
    print(hash_secret(secret))
    return 0


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

    from streamd.service import gcpolicy, serve
    from streamd.service.sdnotify import Notifier, take_environment

    # Taken out of the environment first: children must not speak for the daemon.
    notifier = Notifier(take_environment())
    config = _load(args)
    if args.log_level is None and config.log_level:
        logging.getLogger().setLevel(config.log_level.upper())
    gcpolicy.tune()
    try:
        trio.run(
            partial(
                serve,
                config,
                announce=_announce,
                notifier=notifier,
                reload=partial(_load, args),
                log_level_from_config=args.log_level is None,
            )
        )
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled by the service
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from streamd.service.run import check_startup

    config = _load(args)
    # Exactly what serve reads and builds before it binds (no file is created; a port
    # held by another process is not found: a running daemon may hold these very ports).
    specs = check_startup(config).specs
    from streamd.service.reachability import unreachable

    for warning in unreachable(config):
        logging.getLogger("streamd.config").warning("%s", warning)
    where = args.config or "<defaults>"
    print(
        f"{where}: ok — listen {', '.join(config.server.listen)}; data dir {config.data_dir}; "
        f"synchronous={config.journal.synchronous}; sources: "
        + ", ".join(_describe_source(s) for s in config.sources)
        + "; sinks: "
        + (", ".join(f"{s.name} ({s.kind})" for s in specs) or "none")
        + "; pulls: "
        + (", ".join(p.name for p in config.pulls) or "none")
        + "; admin "
        + (", ".join(config.admin.addresses) or "off")
    )
    return 0


def _describe_source(source: SourceConfig) -> str:
    """``NAME at PATH``; for a client-certificate source, what it pins."""
    if source.auth != "client-cert":
        return f"{source.name} at {source.path}"
    pins = source.client_cert
    counts = [] if pins is None else [
        (len(pins.subjects), "subject", "subjects"),
        (len(pins.common_names), "common name", "common names"),
        (len(pins.sha256_fingerprints), "SHA-256 fingerprint", "SHA-256 fingerprints"),
    ]  # fmt: skip
    what = ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts if n)
    return f"{source.name} at {source.path} (client certificate: " + (
        f"pinned by {what})" if what else "any that server.mtls_client_ca signs)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
