"""``streamd sinks``, ``streamd dlq`` and ``streamd journal pull-reset``: the operator's
commands. Reads come straight from the journal file; every change is one
:mod:`streamd.ops` operation run by an :class:`~streamd.ops.Operator` (through the
daemon that holds the journal, or on the file when none runs)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

import orjson

from streamd.clock import utc_now_datetime
from streamd.core.timeparse import TimeError, format_utc, parse_when
from streamd.journal.paths import journal_in

# The operations (and through them the drain's stores) are imported by the functions
# that run them: every other command parses these flags too.
if TYPE_CHECKING:
    from streamd.ops import Operator

MAX_IDS = 10_000


def bounded_int(low: int, high: int) -> Any:
    """An argparse type: a whole number from ``low`` to ``high``."""

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
    # The grammar of every command that takes a time (journal grep --since, ...).
    try:
        return format_utc(parse_when(text, utc_now_datetime()))
    except TimeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def journal_flags(parser: argparse.ArgumentParser, *, json_flag: bool = False) -> None:
    """Which journal a command works on."""
    parser.add_argument("--data-dir", metavar="DIR", help="data directory (default: as for serve)")
    parser.add_argument("--journal", metavar="FILE", help="journal file (overrides --data-dir)")
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("STREAMD_CONFIG"),
        help="take the data directory from this configuration (default: $STREAMD_CONFIG)",
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def operator_flags(parser: argparse.ArgumentParser) -> None:
    """How to reach a running daemon when its daemon file is not enough."""
    parser.add_argument(
        "--admin-url",
        metavar="URL",
        help="the running daemon's admin listener (default: the one its daemon.json, "
        "beside the journal, names)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="its admin token file (default: the one its daemon.json names)",
    )


def named_journal(args: argparse.Namespace) -> str:
    """The journal a command names: ``--journal``, else ``--data-dir``, else the
    ``--config``'s data directory, else the default one (as for ``serve``)."""
    if args.journal:
        return str(args.journal)
    if args.data_dir or not getattr(args, "config", None):
        return journal_in(args.data_dir)
    from streamd.service.config import load_config

    return load_config(args.config).journal_path


def _operator(args: argparse.Namespace) -> Operator:
    from streamd.ops import Operator

    return Operator(
        named_journal(args),
        admin_url=getattr(args, "admin_url", None),
        token_file=getattr(args, "token_file", None),
    )


def _print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def register(sub: Any) -> None:
    """Add ``sinks`` and ``dlq`` to the top-level subparsers."""
    p_sinks = sub.add_parser(
        "sinks",
        help="list and control the sinks (through the running daemon, or on the journal file "
        "when none runs)",
    )
    ssub = p_sinks.add_subparsers(dest="sinks_command", metavar="SUBCOMMAND")
    ssub.required = True
    p = ssub.add_parser("list", help="state, cursor, lag, dead letters and last error of each sink")
    journal_flags(p, json_flag=True)
    for verb, text in (
        ("pause", "stop delivering to a sink until resumed (retries and replays wait too)"),
        ("resume", "deliver to a paused sink again"),
        ("disable", "turn a sink off until enabled (retention no longer waits for it)"),
        ("enable", "turn a disabled sink on again"),
    ):
        p = ssub.add_parser(verb, help=text)
        p.add_argument("name", help="the sink's name")
        journal_flags(p)
        operator_flags(p)
    p = ssub.add_parser(
        "replay", help="deliver events again: rewind a sink, or re-deliver a filtered range"
    )
    p.add_argument("name", help="the sink's name")
    p.add_argument(
        "--to-seq", metavar="SEQ", type=bounded_int(1, 2**62),
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
        "--from-seq", metavar="SEQ", type=bounded_int(1, 2**62),
        help="deliver again from the event with this seq",
    )  # fmt: skip
    where.add_argument(
        "--since", metavar="TIME", type=_time_arg,
        help="deliver again from the first event received at or after TIME "
        "(2h, 30d, ISO 8601 time or duration)",
    )  # fmt: skip
    journal_flags(p)
    operator_flags(p)
    _register_dlq(sub)


def _register_dlq(sub: Any) -> None:
    p_dlq = sub.add_parser("dlq", help="inspect, retry or drop dead letters")
    dsub = p_dlq.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND")
    dsub.required = True
    p = dsub.add_parser("list", help="dead letters in id order (without the event JSON)")
    p.add_argument("--sink", metavar="NAME", help="only this sink's")
    p.add_argument(
        "--after-id", metavar="ID", type=bounded_int(0, 2**62), default=0,
        help="start after this id (paging)",
    )  # fmt: skip
    p.add_argument(
        "--limit", metavar="N", type=bounded_int(1, 10_000), default=100,
        help="at most N (1-10000, default 100)",
    )  # fmt: skip
    journal_flags(p, json_flag=True)
    p = dsub.add_parser("show", help="one dead letter, with the event's JSON")
    p.add_argument("id", type=bounded_int(1, 2**62), help="the dead letter's id")
    journal_flags(p, json_flag=True)
    for verb, text in (
        ("retry", "deliver dead letters again (through the sink, when its state lets it)"),
        ("drop", "delete dead letters"),
    ):
        p = dsub.add_parser(verb, help=text)
        p.add_argument("--sink", metavar="NAME", required=True, help="the sink they belong to")
        p.add_argument(
            "ids", nargs="*", type=bounded_int(1, 2**62), metavar="ID",
            help="dead letter ids (or --all)",
        )  # fmt: skip
        p.add_argument("--all", action="store_true", help="every dead letter of the sink")
        journal_flags(p)
        operator_flags(p)


def register_journal(jsub: Any) -> None:
    """Add ``journal pull-reset`` to the ``journal`` subparsers."""
    p = jsub.add_parser(
        "pull-reset",
        help="start a pull source over from the oldest or latest event (through the running "
        "daemon, or on the journal file when none runs)",
    )
    journal_flags(p)
    operator_flags(p)
    p.add_argument("name", metavar="NAME", help="the pull's name ([[pulls]] name)")
    p.add_argument(
        "--from",
        dest="restart",
        choices=("oldest", "latest"),
        default="oldest",
        help="where its next start begins (default oldest; pulled again is deduplicated)",
    )
    p.set_defaults(run=_pull_reset)


def _pull_reset(args: argparse.Namespace, out: Any) -> int:
    from streamd.ops import ResetPull

    operator = _operator(args)
    done = operator.run(ResetPull(pull=args.name, restart=args.restart))
    then = "it runs again" if operator.online else "the next start of streamd pulls"
    out.write(
        f"pull {done.name}: position {done.was or '(none)'} cleared; {then} from the "
        f"{done.restart} event\n"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``sinks ...`` or ``dlq ...``."""
    if args.command == "sinks":
        return _sinks(args)
    return _dlq(args)


def _usage(command: str, message: str) -> int:
    print(f"streamd {command}: usage error: {message}", file=sys.stderr)
    return 2


def _sinks(args: argparse.Namespace) -> int:
    from streamd.ops import DisableSink, EnableSink, Operation, PauseSink, ResumeSink

    command = args.sinks_command
    if command == "list":
        return _list_sinks(args)
    operator = _operator(args)
    if command == "replay":
        return _replay(args, operator)
    op: Operation[Any] = {
        "pause": PauseSink,
        "resume": ResumeSink,
        "disable": DisableSink,
        "enable": EnableSink,
    }[command](sink=args.name)
    row = operator.run(op)
    print(f"sink {row.name}: {row.state}")
    return 0


def _list_sinks(args: argparse.Namespace) -> int:
    from streamd.ops import reads

    sinks = reads.list_sinks(named_journal(args))
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


def _replay(args: argparse.Namespace, operator: Operator) -> int:
    from streamd.ops import ReplayRange, RewindSink

    if args.to_seq is not None:
        if args.from_seq is None or args.to_seq < args.from_seq:
            return _usage("sinks replay", "--to-seq needs --from-seq at or below it")
        queued = operator.run(
            ReplayRange(
                sink=args.name,
                from_seq=args.from_seq,
                to_seq=args.to_seq,
                streams=list(args.stream),
                types=list(args.type),
            )
        )
        then = "" if operator.online else "; delivered when streamd runs"
        print(f"{queued.count} events queued for {args.name}{then}")
        return 0
    if args.stream or args.type:
        return _usage("sinks replay", "--stream and --type need --to-seq")
    row = operator.run(RewindSink(sink=args.name, from_seq=args.from_seq, since=args.since))
    print(f"sink {args.name}: cursor {row.cursor}; it delivers again from seq {row.cursor + 1}")
    return 0


def _dlq(args: argparse.Namespace) -> int:
    from streamd.ops import DropDeadLetters, RetryDeadLetters, reads

    command = args.dlq_command
    if command == "list":
        letters = reads.list_dead_letters(
            named_journal(args), args.sink, after_id=args.after_id, limit=args.limit
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
        letter = reads.show_dead_letter(named_journal(args), args.id)
        if args.json:
            _print_json(letter)
        else:
            for key, value in letter.items():
                print(f"{key:<14} {value}")
        return 0
    if bool(args.all) == bool(args.ids):
        return _usage(f"dlq {command}", "give dead letter ids or --all")
    if len(args.ids) > MAX_IDS:
        return _usage(f"dlq {command}", f"at most {MAX_IDS} ids at once")
    kind = RetryDeadLetters if command == "retry" else DropDeadLetters
    operator = _operator(args)
    n = operator.run(kind(sink=args.sink, ids=list(args.ids), all=bool(args.all))).count
    if command == "drop":
        print(f"{n} dead letters of {args.sink} dropped")
    elif operator.online:
        print(f"{n} dead letters of {args.sink} will be delivered again")
    else:
        print(f"{n} dead letters of {args.sink} will be delivered again when streamd runs")
    return 0
