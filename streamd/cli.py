"""The ``streamd`` command: serve, check-config, and the ``journal`` inspection commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson

from streamd import __version__
from streamd.admin.client import admin_call, admin_flags, daemon_running, named_journal
from streamd.emit import cli as emit_cli
from streamd.errors import ConfigError, JournalError, StreamdError, UsageError
from streamd.inspect import cli as inspect_cli
from streamd.service.config import Config
from streamd.service.logs import LOG_FORMATS, configure_logging

# hypercorn, the service, the drain and httpx are imported by the commands that use
# them: `streamd journal ...` starts faster (bench/RESULTS.md, startup).


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
    _drain_commands(sub)
    emit_cli.register(sub)
    return parser


def _bounded_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def _time_arg(text: str) -> str:
    from streamd.drain import offline

    try:
        return offline.parse_time(text)
    except StreamdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _journal_flags(parser: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="data directory (default: as for serve)")
    parser.add_argument("--journal", metavar="FILE", help="journal file (overrides --data-dir)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _drain_commands(sub: Any) -> None:
    p_sinks = sub.add_parser(
        "sinks",
        help="list and control the sinks (through the admin listener while streamd runs)",
    )
    ssub = p_sinks.add_subparsers(dest="sinks_command", metavar="SUBCOMMAND")
    ssub.required = True
    p = ssub.add_parser("list", help="state, cursor, lag, dead letters and last error of each sink")
    _journal_flags(p, json_flag=True)
    for verb, text in (
        ("pause", "stop delivering to a sink until resumed"),
        ("resume", "deliver to a paused sink again"),
        ("disable", "turn a sink off until enabled (retention no longer waits for it)"),
        ("enable", "turn a disabled sink on again"),
    ):
        p = ssub.add_parser(verb, help=text)
        p.add_argument("name", help="the sink's name")
        _journal_flags(p)
        admin_flags(p)
    p = ssub.add_parser(
        "replay", help="deliver events again: rewind a sink, or re-deliver a filtered range"
    )
    p.add_argument("name", help="the sink's name")
    p.add_argument(
        "--to-seq", metavar="SEQ", type=_bounded_int(1, 2**62),
        help="with --from-seq: re-deliver only this range (the cursor stays)",
    )  # fmt: skip
    p.add_argument(
        "--stream", action="append", default=[], metavar="STREAM",
        choices=["activity", "audit", "notification", "other"],
        help="with --to-seq: only this stream (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--type", action="append", default=[], metavar="GLOB",
        help="with --to-seq: only types matching this glob (repeatable)",
    )  # fmt: skip
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--from-seq", metavar="SEQ", type=_bounded_int(1, 2**62),
        help="deliver again from the event with this seq",
    )  # fmt: skip
    where.add_argument(
        "--since", metavar="TIME", type=_time_arg,
        help="deliver again from the first event received at or after TIME (ISO 8601, UTC)",
    )  # fmt: skip
    _journal_flags(p)
    admin_flags(p)

    p_dlq = sub.add_parser("dlq", help="inspect, retry or drop dead letters")
    dsub = p_dlq.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND")
    dsub.required = True
    p = dsub.add_parser("list", help="dead letters in id order (without the event JSON)")
    p.add_argument("--sink", metavar="NAME", help="only this sink's")
    p.add_argument(
        "--after-id", metavar="ID", type=_bounded_int(0, 2**62), default=0,
        help="start after this id (paging)",
    )  # fmt: skip
    p.add_argument(
        "--limit", metavar="N", type=_bounded_int(1, 10_000), default=100,
        help="at most N (1-10000, default 100)",
    )  # fmt: skip
    _journal_flags(p, json_flag=True)
    p = dsub.add_parser("show", help="one dead letter, with the event's JSON")
    p.add_argument("id", type=_bounded_int(1, 2**62), help="the dead letter's id")
    _journal_flags(p, json_flag=True)
    for verb, text in (
        ("retry", "deliver dead letters again (when the daemon next runs)"),
        ("drop", "delete dead letters"),
    ):
        p = dsub.add_parser(verb, help=text)
        p.add_argument("--sink", metavar="NAME", required=True, help="the sink they belong to")
        p.add_argument(
            "ids", nargs="*", type=_bounded_int(1, 2**62), metavar="ID",
            help="dead letter ids (or --all)",
        )  # fmt: skip
        p.add_argument("--all", action="store_true", help="every dead letter of the sink")
        _journal_flags(p)
        admin_flags(p)


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
        return _report(_first_leaf(ours))
    except StreamdError as exc:
        return _report(exc)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "oauth":
        return _hash_secret()
    if args.command == "sinks":
        return _sinks(args)
    if args.command == "dlq":
        return _dlq(args)
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


def _print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _sinks(args: argparse.Namespace) -> int:
    from streamd.drain import offline

    path = named_journal(args)
    command = args.sinks_command
    if command == "list":
        sinks = offline.list_sinks(path)
        if args.json:
            _print_json(sinks)
            return 0
        if not sinks:
            print("no sinks")
        for s in sinks:
            lag = s["lag_seconds"]
            print(
                f"{s['name']:<24} {s['state']:<9} cursor {s['cursor']:<10} "
                f"lag {s['lag_events']} events"
                + (f" ({lag:.0f} s)" if lag else "")
                + f"  confirmed {s['confirmed']}  dead letters {s['dead_letters']}"
                + (f"  reason: {s['reason']}" if s["reason"] else "")
                + (f"  last error: {s['last_error']}" if s["last_error"] else "")
            )
        return 0
    if command == "replay" and args.to_seq is not None:
        if args.from_seq is None or args.to_seq < args.from_seq:
            print(
                "streamd sinks replay: usage error: --to-seq needs --from-seq at or below it",
                file=sys.stderr,
            )
            return 2
        if daemon_running(path):
            body = {
                "name": args.name,
                "from_seq": args.from_seq,
                "to_seq": args.to_seq,
                "streams": list(args.stream),
                "types": list(args.type),
            }
            n = int(admin_call(args, "/sinks/replay-range", body, path)["count"])
            print(f"{n} events queued for {args.name}")
            return 0
        n = offline.replay_range(
            path, args.name, args.from_seq, args.to_seq, streams=args.stream, types=args.type
        )
        print(f"{n} events queued for {args.name}; delivered when streamd runs")
        return 0
    if command == "replay":
        if args.stream or args.type:
            print(
                "streamd sinks replay: usage error: --stream and --type need --to-seq",
                file=sys.stderr,
            )
            return 2
        if daemon_running(path):
            body = {"name": args.name}
            body.update({"from_seq": args.from_seq} if args.from_seq else {"since": args.since})
            got = admin_call(args, "/sinks/replay", body, path)
            cursor = int(got["cursor"])
        else:
            cursor = offline.replay(
                path, args.name, seq=args.from_seq, received_at=args.since
            ).cursor
        print(f"sink {args.name}: cursor {cursor}; it delivers again from seq {cursor + 1}")
        return 0
    if daemon_running(path):
        got = admin_call(args, f"/sinks/{command}", {"name": args.name}, path)
        print(f"sink {got['name']}: {got['state']}")
        return 0
    state, reason = {
        "pause": ("paused", "paused by the operator"),
        "resume": ("active", None),
        "disable": ("disabled", "disabled by the operator"),
        "enable": ("active", None),
    }[command]
    row = offline.set_state(path, args.name, state, reason, resuming=command == "resume")
    print(f"sink {row.name}: {row.state}")
    return 0


def _dlq(args: argparse.Namespace) -> int:
    from streamd.drain import offline

    path = named_journal(args)
    command = args.dlq_command
    if command == "list":
        letters = offline.list_dead_letters(
            path, args.sink, after_id=args.after_id, limit=args.limit
        )
        if args.json:
            _print_json(letters)
            return 0
        if not letters:
            print("no dead letters")
        for d in letters:
            print(
                f"{d['id']:>8}  {d['sink']:<20} seq {d['seq']:<10} {d['event_id']}  "
                f"{d['attempts']} attempts  {d['failed_at']}  {d['reason']}"
                + ("  (retry asked)" if d["retry"] else "")
            )
        return 0
    if command == "show":
        letter = offline.show_dead_letter(path, args.id)
        if args.json:
            _print_json(letter)
        else:
            for key, value in letter.items():
                print(f"{key:<14} {value}")
        return 0
    if bool(args.all) == bool(args.ids):
        print(f"streamd dlq {command}: usage error: give dead letter ids or --all", file=sys.stderr)
        return 2
    if len(args.ids) > 10_000:
        print(f"streamd dlq {command}: usage error: at most 10000 ids at once", file=sys.stderr)
        return 2
    ids = None if args.all else list(args.ids)
    if daemon_running(path):
        body = {"sink": args.sink, **({"all": True} if ids is None else {"ids": ids})}
        n = int(admin_call(args, f"/dlq/{command}", body, path)["count"])
        done = "will be delivered again" if command == "retry" else "dropped"
        print(f"{n} dead letters of {args.sink} {done}")
        return 0
    if command == "retry":
        n = offline.retry_dead_letters(path, args.sink, ids)
        print(f"{n} dead letters of {args.sink} will be delivered again when streamd runs")
    else:
        n = offline.drop_dead_letters(path, args.sink, ids)
        print(f"{n} dead letters of {args.sink} dropped")
    return 0


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
    from streamd.service.sdnotify import Notifier, take_environment

    # Taken out of the environment first: children must not speak for the daemon.
    notifier = Notifier(take_environment())
    config = _load(args)
    if args.log_level is None and config.log_level:
        logging.getLogger().setLevel(config.log_level.upper())
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
    where = args.config or "<defaults>"
    print(
        f"{where}: ok — listen {', '.join(config.server.listen)}; data dir {config.data_dir}; "
        f"synchronous={config.journal.synchronous}; sources: "
        + ", ".join(f"{s.name} at {s.path}" for s in config.sources)
        + "; sinks: "
        + (", ".join(f"{s.name} ({s.kind})" for s in specs) or "none")
        + "; pulls: "
        + (", ".join(p.name for p in config.pulls) or "none")
        + "; admin "
        + (", ".join(config.admin.addresses) or "off")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
