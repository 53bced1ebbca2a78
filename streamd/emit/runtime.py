"""What the senders of one run share: options, the run's state, one attempt.

Protocol time (cadence, retry waits, give-up horizons) passes ``time_scale`` times
faster than real time; request timeouts stay real (they are about the receiver's
speed, not the protocol's calendar).
"""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol

import orjson
import trio

from streamd import __version__
from streamd.emit.accounting import Ledger
from streamd.emit.errors import EmitError
from streamd.emit.generate import RECIPIENT_CLIENT_ID, IdFields, Shape, id_fields_on
from streamd.emit.http import Connection, HttpError, Response, Target
from streamd.emit.oauth import ClientCredentials
from streamd.emit.schedule import HealthPolicy, IoPolicy, LegacyPolicy
from streamd.emit.signing import Signer

Mode = Literal["legacy", "io"]
IdFieldsChoice = Literal["auto", "both", "new"]
USER_AGENT: Final = f"streamd-emit/{__version__}"


class Transport(Protocol):
    """What the sender needs of a connection (:class:`~streamd.emit.http.Connection`)."""

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Response: ...

    async def aclose(self) -> None: ...


Connect = Callable[[Target], Transport]


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """Where and as whom the legacy sender fetches its bearer token."""

    url: str
    client_id: str
    client_secret: str


@dataclass(frozen=True, slots=True)
class EmitOptions:
    """One run of the emulator (the CLI's flags)."""

    url: str
    mode: Mode = "legacy"
    shape: Shape = "legacy"
    batch: int | None = None  # None: legacy 100-500 at random, I/O 20
    parallel: int = 1
    rate: float | None = None  # events/s offered in total; None: the protocol's cadence
    unpaced: bool = False  # as fast as acknowledgements allow
    count: int | None = None  # events to send (first deliveries)
    duration: float | None = None  # seconds to keep sending
    drain: float = 60.0  # after sending stopped, seconds to finish retries
    time_scale: float = 1.0
    duplicates: float = 0.0  # share of acknowledged requests sent again
    seed: int = 1
    single: bool = False  # I/O: a batch of one as a bare object
    inflight: int = 1  # I/O: concurrent requests per registration
    challenge: bool = True
    sign: bool = True
    key_server: str = "127.0.0.1:0"
    recipient: str = RECIPIENT_CLIENT_ID
    # I/O: which id pairs the events carry; "auto": what Adobe sends on ``today``.
    id_fields: IdFieldsChoice = "auto"
    today: datetime.date | None = None  # None: the UTC date when the run starts
    provider: str = "marketo"
    token: str | None = None
    hmac_secret: str | None = None  # I/O: also send the deprecated x-adobe-signature
    oauth: OAuthSettings | None = None
    acked_file: Path | None = None
    timeout: float | None = None  # None: the protocol's (legacy 20 s, I/O 10 s)
    ca_file: Path | None = None  # extra CA certificates for https:// targets
    client_cert: Path | None = None  # PEM certificate (and key) to present: mutual TLS
    client_key: Path | None = None  # its private key, when not in client_cert
    legacy: LegacyPolicy = field(default_factory=LegacyPolicy)
    io: IoPolicy = field(default_factory=IoPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    io_cadence: float = 1.0  # protocol seconds between I/O batches of a registration
    handle_signals: bool = False
    progress: float = 0.0  # seconds between progress lines on the log; 0: none


@dataclass(frozen=True, slots=True)
class Batch:
    serial: int
    body: bytes
    keys: list[str]
    event_id: str = ""


@dataclass(slots=True)
class Attempt:
    status: int | None
    label: str
    response: Response | None
    latency_s: float


class Run:
    """State shared by the subscriptions or registrations of one run."""

    def __init__(self, opts: EmitOptions, ledger: Ledger, connect: Connect | None) -> None:
        self.opts = opts
        self.ledger = ledger
        self.ssl_context = tls_context(opts.ca_file, opts.client_cert, opts.client_key)
        self.connect: Connect = connect or self._connect
        self.target = Target.parse(opts.url)
        self.remaining = opts.count
        self.stopped = trio.Event()  # duration over or a signal: send nothing new
        self.exhausted = trio.Event()  # --count reached
        self.serial = 0
        self.oauth = (
            ClientCredentials(
                opts.oauth.url,
                opts.oauth.client_id,
                opts.oauth.client_secret,
                timeout=self.timeout,
                ssl_context=self.ssl_context,
            )
            if opts.oauth
            else None
        )
        self.signer: Signer | None = None
        self.key_base = ""
        self.id_fields: IdFields = resolve_id_fields(opts.id_fields, opts.today)
        self.content_type_single = "application/cloudevents+json; charset=UTF-8"
        per_sub = (opts.rate / opts.parallel) if opts.rate else None
        self.per_sub_rate = per_sub

    def _connect(self, target: Target) -> Transport:
        return Connection(target, ssl_context=self.ssl_context)

    @property
    def timeout(self) -> float:
        if self.opts.timeout is not None:
            return self.opts.timeout
        return self.opts.legacy.timeout if self.opts.mode == "legacy" else self.opts.io.timeout

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def take(self, n: int) -> int:
        """Up to ``n`` events of the ``--count`` budget (all of ``n`` without one)."""
        if self.remaining is None:
            return n
        n = min(n, self.remaining)
        self.remaining -= n
        if self.remaining == 0:
            self.exhausted.set()
        return n

    def protocol_now(self) -> float:
        return trio.current_time() * self.opts.time_scale

    async def protocol_sleep(self, seconds: float) -> None:
        await trio.sleep(seconds / self.opts.time_scale)

    def interval(self, events: int, cadence: float) -> float:
        """Real seconds between one subscription's batches."""
        if self.per_sub_rate:
            return events / self.per_sub_rate
        return cadence / self.opts.time_scale

    async def attempt(
        self,
        conn: Transport,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> Attempt:
        started = time.perf_counter()
        try:
            with trio.fail_after(self.timeout):
                resp = await conn.request(method, path, headers, body)
        except trio.TooSlowError:
            await conn.aclose()
            return Attempt(None, "timeout", None, time.perf_counter() - started)
        except HttpError:
            return Attempt(None, "connection", None, time.perf_counter() - started)
        return Attempt(resp.status, str(resp.status), resp, time.perf_counter() - started)


def resolve_id_fields(choice: IdFieldsChoice, today: datetime.date | None = None) -> IdFields:
    """``choice``, with ``"auto"`` made what Adobe sends on ``today`` (default: the UTC date)."""
    if choice != "auto":
        return choice
    return id_fields_on(today or datetime.datetime.now(datetime.UTC).date())


def receiver_duplicates(resp: Response | None) -> int:
    """The ``duplicates`` count of a streamd-style answer, else 0."""
    if resp is None or not resp.body.startswith(b"{"):
        return 0
    try:
        value = orjson.loads(resp.body).get("duplicates", 0)
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def tls_context(
    ca_file: Path | None, client_cert: Path | None = None, client_key: Path | None = None
) -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` when given (a private CA); with
    ``client_cert`` (and ``client_key`` when the key is in a file of its own), the
    certificate presented to a listener that asks for one (Adobe's mutual TLS).

    Raises :class:`EmitError` when a file cannot be read as PEM certificates or key.
    """
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise EmitError(f"--ca-file {ca_file}: not readable PEM certificates: {exc}") from exc
    if client_key is not None and client_cert is None:
        raise EmitError("--client-key needs --client-cert")
    if client_cert is not None:
        try:
            context.load_cert_chain(
                str(client_cert), None if client_key is None else str(client_key)
            )
        except (OSError, ssl.SSLError) as exc:
            what = f"--client-cert {client_cert}" + (
                "" if client_key is None else f" with --client-key {client_key}"
            )
            raise EmitError(
                f"{what}: not a readable PEM certificate and matching private key: {exc}"
            ) from exc
    return context
