"""``streamd emit``: the flags of the sender emulator, its journal server, and ``emit
verify``; the work is in :mod:`streamd.emit`. ``streamd.cli`` calls :func:`register`
and :func:`run`."""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from streamd.auth import read_token_file
from streamd.emit.errors import EmitError, UsageError
from streamd.emit.generate import MAX_SEED
from streamd.errors import ConfigError, StreamdError, first_leaf
from streamd.fsutil import atomic_write

# The sender, its HTTP client and the journal server (trio, h11, hypercorn) are imported
# by the functions that run them: every other command parses emit's flags too.
if TYPE_CHECKING:
    from streamd.emit.sender import EmitOptions


def _positive(kind: type[float] | type[int], name: str) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--duplicates must be a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--duplicates must be between 0 and 1, got {text!r}")
    return value


def _url(text: str) -> str:
    from streamd.emit.http import Target

    try:
        Target.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def register(sub: Any) -> None:
    """Add ``emit`` (and ``emit verify``) to the ``streamd`` subcommands."""
    p = sub.add_parser(
        "emit",
        # The parent would take verify's --journal for an abbreviation of --journal-server.
        allow_abbrev=False,
        help="send realistic Marketo traffic the way Marketo and Adobe send it",
        description="Emulate Marketo's legacy push and Adobe I/O Events senders against an "
        "endpoint, or serve a Journaling API (--journal-server).",
    )
    _traffic_flags(p)
    _io_and_tls_flags(p)
    _credential_flags(p)
    _output_flags(p)
    _journal_server_flags(p)
    esub = p.add_subparsers(dest="emit_command", metavar="SUBCOMMAND")
    v = esub.add_parser("verify", help="check that every acknowledged id is journaled once")
    v.add_argument("--journal", metavar="PATH", type=Path, required=True, help="journal.db")
    v.add_argument(
        "--acked", metavar="FILE", type=Path, required=True, help="the emulator's acked file"
    )


def _traffic_flags(p: argparse.ArgumentParser) -> None:
    """Where to send, what, how fast and for how long."""
    p.add_argument("--to", metavar="URL", type=_url, help="the endpoint to deliver to")
    p.add_argument(
        "--mode",
        choices=("legacy", "io"),
        default="legacy",
        help="legacy push (default) or Adobe I/O Events",
    )
    p.add_argument(
        "--shape",
        choices=("io", "mixed"),
        default="io",
        help="I/O mode: lead-activity CloudEvents (io), or activities, audit events in both "
        "wrappers and notifications (mixed)",
    )
    p.add_argument(
        "--batch",
        type=_positive(int, "--batch"),
        help="events per request (default: legacy 100-500 at random, I/O 20; I/O at most 20)",
    )
    p.add_argument(
        "--single",
        action="store_true",
        help="I/O mode with --batch 1: send each event as a bare object, not an array",
    )
    p.add_argument(
        "--parallel",
        type=_positive(int, "--parallel"),
        default=1,
        help="subscriptions (legacy) or registrations (I/O) sending side by side (default 1)",
    )
    _pace_flags(p)


def _pace_flags(p: argparse.ArgumentParser) -> None:
    """How fast, for how long, and how the senders retry and repeat."""
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate",
        type=_positive(float, "--rate"),
        help="events/s offered in total (default: the protocol's cadence: legacy a batch "
        "every 2 s per subscription, I/O a batch every second per registration)",
    )
    pace.add_argument(
        "--unpaced",
        action="store_true",
        help="send as fast as acknowledgements allow",
    )
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--count", type=_positive(int, "--count"), help="events to send, then stop")
    stop.add_argument(
        "--duration", type=_positive(float, "--duration"), help="seconds to send for, then stop"
    )
    p.add_argument(
        "--drain",
        type=float,
        default=60.0,
        help="after sending stopped, seconds to let retries finish (default 60)",
    )
    p.add_argument(
        "--time-scale",
        type=_positive(float, "--time-scale"),
        default=1.0,
        help="protocol time runs this many times faster (60: a 3-minute retry wait takes 3 s)",
    )
    p.add_argument(
        "--duplicates",
        type=_fraction,
        default=0.0,
        help="share (0-1) of acknowledged requests sent again, as at-least-once senders do",
    )
    p.add_argument("--seed", type=int, default=1, help=f"data seed, 0-{MAX_SEED - 1} (default 1)")
    p.add_argument(
        "--inflight",
        type=_positive(int, "--inflight"),
        default=1,
        help="I/O mode: concurrent requests per registration (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=_positive(float, "--timeout"),
        help="request timeout in seconds (default: legacy 20, I/O 10; never time-scaled)",
    )


def _io_and_tls_flags(p: argparse.ArgumentParser) -> None:
    """TLS trust, and what only Adobe I/O Events sends (challenge, signatures, keys)."""
    p.add_argument(
        "--ca-file",
        metavar="FILE",
        type=Path,
        help="PEM CA certificates to trust for https:// (besides the system's)",
    )
    p.add_argument(
        "--client-cert",
        metavar="FILE",
        type=Path,
        help="PEM client certificate to present over https:// (mutual TLS, as Adobe's "
        "mTLS registrations do); its key too unless --client-key",
    )
    p.add_argument(
        "--client-key", metavar="FILE", type=Path, help="the private key of --client-cert"
    )
    p.add_argument(
        "--no-challenge", action="store_true", help="I/O mode: skip the challenge handshake"
    )
    p.add_argument("--no-sign", action="store_true", help="I/O mode: send no RSA signatures")
    p.add_argument(
        "--hmac-secret-file",
        metavar="FILE",
        help="I/O mode: also send the deprecated x-adobe-signature (HMAC-SHA256 keyed with "
        "the client secret in FILE)",
    )
    p.add_argument(
        "--key-server",
        metavar="HOST:PORT",
        default="127.0.0.1:0",
        help="I/O mode: where to serve the public keys (default 127.0.0.1:0, any free port)",
    )
    p.add_argument(
        "--recipient",
        default="streamd-bench-client",
        help="I/O mode: the recipientclientid in every event (your client id)",
    )
    p.add_argument(
        "--id-fields",
        choices=("auto", "both", "new"),
        help="I/O mode: both: every event carries eventid/recipientclientid and "
        "event_id/recipient_client_id, as Adobe sends until the end of 2026; new: only "
        "eventid/recipientclientid, Adobe's shape from 2027; auto (default): both until "
        "2026-12-31 (UTC), new from 2027-01-01",
    )
    p.add_argument("--provider", default="marketo", help="I/O mode: the x-adobe-provider header")


def _credential_flags(p: argparse.ArgumentParser) -> None:
    """The credentials the legacy push and the journal server use."""
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="API token file (first token): sent as 'Authorization: Bearer'",
    )
    p.add_argument("--oauth-url", metavar="URL", type=_url, help="legacy: identity provider URL")
    p.add_argument(
        "--client-id", help="legacy OAuth: the client id (journal server: the x-api-key)"
    )
    p.add_argument(
        "--client-secret-file",
        metavar="FILE",
        help="legacy OAuth: file holding the secret (journal server: serve an IMS token "
        "endpoint at /ims/token/v3 for this client)",
    )


def _output_flags(p: argparse.ArgumentParser) -> None:
    """What the run writes: acknowledged ids, progress, the summary."""
    p.add_argument(
        "--acked", metavar="FILE", type=Path, help="append every acknowledged event id here"
    )
    p.add_argument(
        "--progress",
        metavar="S",
        type=float,
        default=10.0,
        help="log a progress line every S seconds (default 10; 0: none)",
    )
    p.add_argument("--summary", metavar="FILE", type=Path, help="write the summary JSON here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _journal_server_flags(p: argparse.ArgumentParser) -> None:
    """``--journal-server``: a generated Adobe Journaling API instead of sending."""
    p.add_argument(
        "--journal-server",
        action="store_true",
        help="serve a generated Adobe Journaling API instead of sending",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:8090",
        help="journal server: listen address (default 127.0.0.1:8090; port 0 picks one)",
    )
    p.add_argument(
        "--journal-events",
        type=int,
        default=1000,
        help="journal server: events in the journal at start (default 1000)",
    )
    p.add_argument(
        "--journal-rate",
        type=float,
        default=0.0,
        help="journal server: events appended per second while it runs (default 0)",
    )
    p.add_argument(
        "--journal-expired",
        type=int,
        default=0,
        help="journal server: the first N positions are past retention (410)",
    )
    p.add_argument(
        "--journal-org-id",
        metavar="ID",
        help="journal server: require this x-ims-org-id",
    )
    p.add_argument(
        "--journal-token-file",
        metavar="FILE",
        help="journal server: require 'Authorization: Bearer' with this token",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``streamd emit`` as parsed; returns the exit status."""
    try:
        if args.emit_command == "verify":
            return _verify(args)
        if args.journal_server:
            return run_journal_server(args)
        return _emit(args)
    except UsageError as exc:
        print(f"streamd emit: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        ours, rest = group.split(StreamdError)
        if ours is None or rest is not None:
            raise
        first = first_leaf(ours)
        print(f"streamd emit: {first}", file=sys.stderr)
        return 2 if isinstance(first, UsageError) else 1
    except EmitError as exc:
        print(f"streamd emit: {exc}", file=sys.stderr)
        return 1


def _verify(args: argparse.Namespace) -> int:
    from streamd.emit.verify import verify

    verdict = verify(args.journal, args.acked)
    out = verdict.report()
    (sys.stdout if verdict.ok else sys.stderr).write(out)
    return 0 if verdict.ok else 1


def _first_token(path: str, what: str) -> str:
    try:
        return read_token_file(path)[0]
    except ConfigError as exc:
        raise UsageError(f"{what}: {exc}") from None


def options_from(args: argparse.Namespace) -> EmitOptions:
    """The run's options from the parsed flags; raises :class:`UsageError`."""
    from streamd.emit.sender import EmitOptions, OAuthSettings

    _check_bounds(args)
    oauth_flags = (args.oauth_url, args.client_id, args.client_secret_file)
    oauth = None
    if any(oauth_flags):
        if not all(oauth_flags):
            raise UsageError("OAuth needs all of --oauth-url, --client-id, --client-secret-file")
        if args.mode != "legacy":
            raise UsageError("OAuth client credentials are a legacy push feature (--mode legacy)")
        if args.token_file:
            raise UsageError("--token-file and OAuth are alternatives: give one")
        secret = _first_token(args.client_secret_file, "--client-secret-file")
        oauth = OAuthSettings(args.oauth_url, args.client_id, secret)
    token = _first_token(args.token_file, "--token-file") if args.token_file else None
    hmac_secret = None
    if args.hmac_secret_file:
        if args.mode != "io":
            raise UsageError("--hmac-secret-file is an Adobe I/O Events header (--mode io)")
        hmac_secret = _first_token(args.hmac_secret_file, "--hmac-secret-file")
    if args.id_fields is not None and args.mode != "io":
        raise UsageError("--id-fields is an Adobe I/O Events option (--mode io)")
    _check_tls(args)
    return EmitOptions(
        url=args.to,
        mode=args.mode,
        shape="legacy" if args.mode == "legacy" else args.shape,
        batch=args.batch,
        parallel=args.parallel,
        rate=args.rate,
        unpaced=args.unpaced,
        count=args.count,
        duration=args.duration,
        drain=args.drain,
        time_scale=args.time_scale,
        duplicates=args.duplicates,
        seed=args.seed,
        single=args.single,
        inflight=args.inflight,
        challenge=not args.no_challenge,
        sign=not args.no_sign,
        key_server=args.key_server,
        recipient=args.recipient,
        id_fields=args.id_fields or "auto",
        provider=args.provider,
        token=token,
        hmac_secret=hmac_secret,
        oauth=oauth,
        acked_file=args.acked,
        timeout=args.timeout,
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        handle_signals=True,
        progress=args.progress,
    )


def _check_tls(args: argparse.Namespace) -> None:
    """The TLS files load (before any request goes out); raises :class:`UsageError`."""
    if args.ca_file is None and args.client_cert is None and args.client_key is None:
        return
    from streamd.emit.sender import tls_context

    try:
        tls_context(args.ca_file, args.client_cert, args.client_key)
    except EmitError as exc:
        raise UsageError(str(exc)) from None


def _check_bounds(args: argparse.Namespace) -> None:
    if not args.to:
        raise UsageError("--to URL is required (or --journal-server)")
    if not 0 <= args.seed < MAX_SEED:
        raise UsageError(f"--seed must be in 0-{MAX_SEED - 1}, got {args.seed}")
    if args.progress < 0 or not math.isfinite(args.progress):
        raise UsageError(f"--progress must be 0 or more, got {args.progress}")
    if args.drain < 0 or not math.isfinite(args.drain):
        raise UsageError(f"--drain must be 0 or more, got {args.drain}")
    if args.parallel > 1024:
        raise UsageError(f"--parallel must be at most 1024, got {args.parallel}")
    if args.mode == "io" and args.batch is not None and args.batch > 20:
        raise UsageError(
            f"--batch: Adobe I/O Events batches hold at most 20 events, got {args.batch}"
        )
    if args.batch is not None and args.batch > 10_000:
        raise UsageError(f"--batch must be at most 10000, got {args.batch}")


def _emit(args: argparse.Namespace) -> int:
    import trio

    from streamd.emit.accounting import format_summary
    from streamd.emit.sender import run_emit

    opts = options_from(args)
    summary = trio.run(partial(run_emit, opts))
    if args.summary is not None:
        try:
            # 0666 less the umask: the mode Path.write_bytes gave the summary before.
            atomic_write(
                str(args.summary),
                orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n",
                mode=0o666,
            )
        except OSError as exc:
            raise UsageError(f"--summary {args.summary}: cannot write: {exc.strerror}") from exc
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_summary(summary))
    sys.stdout.flush()
    complete = summary["events_given_up"] == 0 and summary["events_unresolved"] == 0
    return 0 if complete else 1


def run_journal_server(args: argparse.Namespace) -> int:
    """``streamd emit --journal-server``: serve until SIGINT/SIGTERM; exit status."""
    token = None
    if args.journal_token_file:
        token = _first_token(args.journal_token_file, "--journal-token-file")
    secret = None
    if args.client_secret_file:
        if not args.client_id:
            raise UsageError("--client-secret-file needs --client-id (the journal's x-api-key)")
        secret = _first_token(args.client_secret_file, "--client-secret-file")
    from streamd.emit.journal_api import JournalApi, serve_journal_api

    try:
        api = JournalApi(
            seed=args.seed,
            initial=args.journal_events,
            rate=args.journal_rate,
            expired=args.journal_expired,
            token=token,
            api_key=args.client_id,
            org_id=args.journal_org_id,
            client_secret=secret,
        )
    except ValueError as exc:
        raise UsageError(f"journal server: {exc}") from None
    if api.expired > api.initial:
        raise UsageError("--journal-expired cannot exceed --journal-events")
    return serve_journal_api(api, args.listen)
