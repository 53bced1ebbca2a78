"""The emulator's runtime: subscriptions and registrations that send like Marketo and Adobe.

The retry rules are the sans-IO machines of :mod:`streamd.emit.schedule`; this module
sleeps, sends and counts. Protocol time (cadence, retry waits, give-up horizons) passes
``time_scale`` times faster than real time; request timeouts stay real (they are about
the receiver's speed, not the protocol's calendar).

- legacy push: each subscription sends its batches in order, one at a time; a failing
  batch holds the subscription (retrying, then paused) until it succeeds or is given up;
- Adobe I/O Events: each registration answers the challenge first, then sends batches
  with up to ``inflight`` requests at once; a batch waiting for its retry does not hold
  the others back (Adobe guarantees no order).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import orjson
import trio

from streamd import __version__
from streamd.emit.accounting import Ledger
from streamd.emit.asgi import serve_handler
from streamd.emit.errors import EmitError
from streamd.emit.generate import RECIPIENT_CLIENT_ID, BatchMaker, Shape
from streamd.emit.http import Connection, HttpError, Response, Target
from streamd.emit.oauth import ClientCredentials, TokenFetchError
from streamd.emit.schedule import IoDelivery, IoPolicy, LegacyDelivery, LegacyPolicy
from streamd.emit.signing import Signatures, Signer

log = logging.getLogger("streamd.emit")

Mode = Literal["legacy", "io"]
_MAX_PENDING: Final = 10_000  # I/O batches per registration not yet resolved (memory bound)
_USER_AGENT: Final = f"streamd-emit/{__version__}"


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
    provider: str = "marketo"
    token: str | None = None
    oauth: OAuthSettings | None = None
    acked_file: Path | None = None
    timeout: float | None = None  # None: the protocol's (legacy 20 s, I/O 10 s)
    ca_file: Path | None = None  # extra CA certificates for https:// targets
    legacy: LegacyPolicy = field(default_factory=LegacyPolicy)
    io: IoPolicy = field(default_factory=IoPolicy)
    io_cadence: float = 1.0  # protocol seconds between I/O batches of a registration
    handle_signals: bool = False


@dataclass(frozen=True, slots=True)
class _Batch:
    serial: int
    body: bytes
    keys: list[str]
    event_id: str = ""


@dataclass(slots=True)
class _Attempt:
    status: int | None
    label: str
    response: Response | None
    latency_s: float


class _Run:
    """State shared by the subscriptions or registrations of one run."""

    def __init__(self, opts: EmitOptions, ledger: Ledger, connect: Connect | None) -> None:
        self.opts = opts
        self.ledger = ledger
        self.ssl_context = tls_context(opts.ca_file)
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
    ) -> _Attempt:
        started = time.perf_counter()
        try:
            with trio.fail_after(self.timeout):
                resp = await conn.request(method, path, headers, body)
        except trio.TooSlowError:
            await conn.aclose()
            return _Attempt(None, "timeout", None, time.perf_counter() - started)
        except HttpError:
            return _Attempt(None, "connection", None, time.perf_counter() - started)
        return _Attempt(resp.status, str(resp.status), resp, time.perf_counter() - started)


def _receiver_duplicates(resp: Response | None) -> int:
    """The ``duplicates`` count of a streamd-style answer, else 0."""
    if resp is None or not resp.body.startswith(b"{"):
        return 0
    try:
        value = orjson.loads(resp.body).get("duplicates", 0)
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


# -- legacy push ------------------------------------------------------------------


async def _legacy_headers(run: _Run) -> list[tuple[str, str]]:
    headers = [("Content-Type", "application/json"), ("User-Agent", _USER_AGENT)]
    if run.oauth is not None:
        token = await run.oauth.token()
        headers.append(("Authorization", f"Bearer {token}"))
    elif run.opts.token is not None:
        headers.append(("Authorization", f"Bearer {run.opts.token}"))
    return headers


async def _deliver_legacy(
    run: _Run, conn: Transport, batch: _Batch, index: int, *, duplicate: bool
) -> None:
    ledger = run.ledger
    ledger.started(batch.serial, len(batch.keys), duplicate=duplicate)
    state = LegacyDelivery(run.opts.legacy, run.protocol_now())
    first = time.perf_counter()
    retry = False
    while True:
        try:
            headers = await _legacy_headers(run)
        except TokenFetchError as exc:
            log.warning("subscription %d: %s", index, exc)
            outcome = _Attempt(None, "token", None, 0.0)
        else:
            outcome = await run.attempt(conn, "POST", run.target.path, headers, batch.body)
        ledger.attempt(outcome.label, retry=retry)
        if outcome.status == 401 and run.oauth is not None:
            run.oauth.invalidate()
        was = state.state
        decision = state.after(run.protocol_now(), outcome.status)
        if decision.action == "ack":
            if was == "paused":
                ledger.paused_subscriptions -= 1
                log.info("subscription %d: delivered again, re-enabled", index)
            ledger.acked(
                batch.serial,
                batch.keys,
                outcome.latency_s,
                time.perf_counter() - first,
                duplicate=duplicate,
                receiver_duplicates=_receiver_duplicates(outcome.response),
            )
            return
        if decision.action == "give_up":
            if was == "paused":
                ledger.paused_subscriptions -= 1
            log.warning("subscription %d: gave up a batch: %s", index, decision.reason)
            ledger.given_up(batch.serial, len(batch.keys), decision.reason, duplicate=duplicate)
            return
        if state.state == "paused" and was != "paused":
            ledger.pauses += 1
            ledger.paused_subscriptions += 1
            log.warning(
                "subscription %d: paused after %d failed retries; retrying every %g s (protocol)",
                index,
                run.opts.legacy.retries,
                run.opts.legacy.paused_interval,
            )
        await run.protocol_sleep(decision.wait)
        retry = True


async def _legacy_subscription(run: _Run, index: int) -> None:
    opts = run.opts
    policy = opts.legacy
    maker = BatchMaker("legacy", seed=opts.seed, worker=index, recipient=opts.recipient)
    rng = random.Random(f"streamd-emit:{opts.seed}:{index}")  # noqa: S311 - reproducible
    conn = run.connect(run.target)
    due = trio.current_time()
    try:
        while not run.stopped.is_set():
            size = opts.batch or rng.randint(policy.min_batch, policy.max_batch)
            n = run.take(size)
            if n == 0:
                return
            made = maker.make(n)
            if not opts.unpaced:
                await trio.sleep_until(due)
                due += run.interval(n, policy.cadence)
                if run.stopped.is_set():
                    return
            batch = _Batch(run.next_serial(), made.body, made.keys)
            await _deliver_legacy(run, conn, batch, index, duplicate=False)
            if opts.duplicates and rng.random() < opts.duplicates:
                again = _Batch(run.next_serial(), batch.body, batch.keys)
                await _deliver_legacy(run, conn, again, index, duplicate=True)
    finally:
        await conn.aclose()


# -- Adobe I/O Events --------------------------------------------------------------


class _Registration:
    """One I/O Events registration: a connection pool and bounds on what is in flight."""

    def __init__(self, run: _Run, index: int) -> None:
        self.run = run
        self.index = index
        opts = run.opts
        self.rng = random.Random(f"streamd-emit:{opts.seed}:{index}")  # noqa: S311
        self.slots = trio.Semaphore(opts.inflight)
        self.pending = trio.Semaphore(_MAX_PENDING)
        self.pool: list[Transport] = []
        self.event_code = (
            "com.adobe.platform.marketo.activity"
            if opts.shape == "io"
            else "com.adobe.platform.marketo"
        )

    async def challenge(self) -> None:
        """Adobe's registration handshake: ``GET url?challenge=X`` must answer ``X``.

        Raises :class:`EmitError` when it does not (Adobe would not register the URL).
        """
        run = self.run
        value = f"emit{self.rng.getrandbits(64):016x}"
        path = run.target.with_query(f"challenge={value}")
        conn = run.connect(run.target)
        try:
            got = await run.attempt(conn, "GET", path, [("User-Agent", _USER_AGENT)], None)
        finally:
            await conn.aclose()
        body = got.response.body if got.response is not None else b""
        ok = got.status == 200 and body.strip() == value.encode()
        if got.status == 200 and not ok:
            try:
                ok = orjson.loads(body) == {"challenge": value}
            except orjson.JSONDecodeError:
                ok = False
        if not ok:
            raise EmitError(
                f"registration {self.index}: the challenge GET {run.target.origin}{path} "
                f"answered {got.label} {body[:120]!r}, not the value; Adobe would not "
                "register this URL (--no-challenge skips the handshake)"
            )
        log.info("registration %d: challenge answered", self.index)

    def headers(
        self, batch: _Batch, retry: int, signatures: Signatures | None, single: bool
    ) -> list[tuple[str, str]]:
        run = self.run
        content_type = run.content_type_single if single else "application/json"
        headers = [
            ("Content-Type", content_type),
            ("User-Agent", _USER_AGENT),
            ("x-adobe-event-id", batch.event_id),
            ("x-adobe-delivery-id", str(uuid.uuid4())),
            ("x-request-id", str(uuid.uuid4())),
            ("x-adobe-event-code", self.event_code),
            ("x-adobe-provider", run.opts.provider),
        ]
        if retry:
            headers.append(("x-adobe-retry-count", str(retry)))
        if signatures is not None and run.signer is not None:
            headers += run.signer.headers(signatures)
        if run.opts.token is not None:
            headers.append(("Authorization", f"Bearer {run.opts.token}"))
        return headers

    async def deliver(self, batch: _Batch, *, duplicate: bool, holding: bool) -> None:
        """Deliver ``batch`` per Adobe's retry rules. ``holding``: a slot is already ours."""
        run, ledger = self.run, self.run.ledger
        ledger.started(batch.serial, len(batch.keys), duplicate=duplicate)
        signatures = run.signer.sign(batch.body) if run.signer is not None else None
        single = not batch.body.startswith(b"[")
        state = IoDelivery(run.opts.io, run.protocol_now())
        first = time.perf_counter()
        retry = 0
        try:
            while True:
                if not holding:
                    await self.slots.acquire()
                    holding = True
                conn = self.pool.pop() if self.pool else run.connect(run.target)
                try:
                    headers = self.headers(batch, retry, signatures, single)
                    outcome = await run.attempt(conn, "POST", run.target.path, headers, batch.body)
                finally:
                    self.pool.append(conn)
                    self.slots.release()
                    holding = False
                ledger.attempt(outcome.label, retry=retry > 0)
                decision = state.after(run.protocol_now(), outcome.status)
                if decision.action == "ack":
                    ledger.acked(
                        batch.serial,
                        batch.keys,
                        outcome.latency_s,
                        time.perf_counter() - first,
                        duplicate=duplicate,
                        receiver_duplicates=_receiver_duplicates(outcome.response),
                    )
                    break
                if decision.action == "give_up":
                    log.warning("registration %d: dropped a batch: %s", self.index, decision.reason)
                    ledger.given_up(
                        batch.serial, len(batch.keys), decision.reason, duplicate=duplicate
                    )
                    return
                await run.protocol_sleep(decision.wait)
                retry += 1
        finally:
            if holding:
                self.slots.release()
        if not duplicate and run.opts.duplicates and self.rng.random() < run.opts.duplicates:
            again = _Batch(run.next_serial(), batch.body, batch.keys, batch.event_id)
            await self.deliver(again, duplicate=True, holding=False)

    async def _deliver_and_release(self, batch: _Batch) -> None:
        try:
            await self.deliver(batch, duplicate=False, holding=True)
        finally:
            self.pending.release()

    async def run_loop(self) -> None:
        run, opts = self.run, self.run.opts
        if opts.challenge:
            await self.challenge()
        shape = opts.shape if opts.shape != "legacy" else "io"
        maker = BatchMaker(shape, seed=opts.seed, worker=self.index, recipient=opts.recipient)
        size = opts.batch or opts.io.max_events
        due = trio.current_time()
        try:
            async with trio.open_nursery() as tasks:
                while not run.stopped.is_set():
                    n = run.take(size)
                    if n == 0:
                        break
                    made = maker.make(n, single=opts.single)
                    if not opts.unpaced:
                        await trio.sleep_until(due)
                        due += run.interval(n, opts.io_cadence)
                        if run.stopped.is_set():
                            break
                    await self.pending.acquire()
                    try:
                        await self.slots.acquire()
                    except BaseException:
                        self.pending.release()
                        raise
                    event_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
                    batch = _Batch(run.next_serial(), made.body, made.keys, event_id)
                    tasks.start_soon(self._deliver_and_release, batch)
        finally:
            for conn in self.pool:
                await conn.aclose()


# -- the run ---------------------------------------------------------------------


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` when given (a private CA).

    Raises :class:`EmitError` when ``ca_file`` cannot be read as PEM certificates.
    """
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise EmitError(f"--ca-file {ca_file}: not readable PEM certificates: {exc}") from exc
    return context


async def _drain_watch(run: _Run, senders: trio.CancelScope) -> None:
    """Once sending is over (count reached, duration over, signal), allow ``drain`` s."""
    async with trio.open_nursery() as watch:

        async def wait_for(event: trio.Event) -> None:
            await event.wait()
            watch.cancel_scope.cancel()

        watch.start_soon(wait_for, run.stopped)
        watch.start_soon(wait_for, run.exhausted)
    await trio.sleep(run.opts.drain)
    log.warning(
        "drain time of %g s is over: %d batches still unresolved",
        run.opts.drain,
        len(run.ledger.in_flight),
    )
    senders.cancel()


async def _stop_after(run: _Run, seconds: float) -> None:
    await trio.sleep(seconds)
    run.stopped.set()


async def _on_signals(run: _Run, outer: trio.CancelScope) -> None:
    import signal

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not run.stopped.is_set():
                log.warning(
                    "signal %d: no new batches; finishing retries (again to stop now)", signum
                )
                run.stopped.set()
            else:
                outer.cancel()


async def run_emit(
    opts: EmitOptions,
    *,
    connect: Connect | None = None,
    ledger: Ledger | None = None,
) -> dict[str, Any]:
    """Run the emulator as ``opts`` says; return the summary.

    Raises :class:`EmitError` when a registration's challenge fails or the signing key
    cannot be made; every other failure is counted in the summary, not raised.
    """
    ledger = ledger or Ledger(opts.acked_file)
    run = _Run(opts, ledger, connect)
    started = trio.current_time()
    try:
        async with trio.open_nursery() as outer:
            if opts.handle_signals:
                outer.start_soon(_on_signals, run, outer.cancel_scope)
            if opts.mode == "io" and opts.sign:
                run.signer = await trio.to_thread.run_sync(Signer)
                binds = await outer.start(serve_handler, run.signer.serve_key, opts.key_server)
                run.key_base = binds[0]
                log.info("public keys served at %s%s and %s", binds[0], *run.signer.paths)
            if opts.duration is not None:
                outer.start_soon(_stop_after, run, opts.duration)
            async with trio.open_nursery() as senders:
                outer.start_soon(_drain_watch, run, senders.cancel_scope)
                for index in range(opts.parallel):
                    if opts.mode == "legacy":
                        senders.start_soon(_legacy_subscription, run, index)
                    else:
                        senders.start_soon(_Registration(run, index).run_loop)
            outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A failed challenge ends the run: raise it as the one error it is.
        ours, rest = group.split(EmitError)
        if ours is None or rest is not None:
            raise
        first: BaseException = ours
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    finally:
        ledger.finish()
    if run.oauth is not None:
        ledger.token_fetches = run.oauth.fetches
    summary = ledger.summary(trio.current_time() - started)
    parts = run.target
    return {
        "target": f"{parts.origin}{parts.path.split('?', 1)[0]}",  # never the query: tokens
        "mode": opts.mode,
        "shape": opts.shape,
        "parallel": opts.parallel,
        "time_scale": opts.time_scale,
        "seed": opts.seed,
        "key_server": run.key_base or None,
        **summary,
    }
