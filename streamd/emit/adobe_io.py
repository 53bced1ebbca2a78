"""The Adobe I/O Events sender: webhooks of a registration (CONTRACT.md §1b).

Each registration answers the challenge first, then sends batches with up to
``inflight`` requests at once; a batch waiting for its retry does not hold the others
back (Adobe guarantees no order).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import random
import time
import uuid
from typing import Final

import orjson
import trio

from streamd.emit.errors import EmitError
from streamd.emit.generate import BatchMaker
from streamd.emit.runtime import USER_AGENT, Batch, Run, Transport, receiver_duplicates
from streamd.emit.schedule import IoDelivery, RegistrationHealth, is_success
from streamd.emit.signing import Signatures

log = logging.getLogger("streamd.emit")

MAX_PENDING: Final = 10_000  # batches per registration not yet resolved (memory bound)


class Registration:
    """One I/O Events registration: a connection pool and bounds on what is in flight."""

    def __init__(self, run: Run, index: int) -> None:
        self.run = run
        self.index = index
        opts = run.opts
        self.rng = random.Random(f"streamd-emit:{opts.seed}:{index}")  # noqa: S311
        self.slots = trio.Semaphore(opts.inflight)
        self.pending = trio.Semaphore(MAX_PENDING)
        self.pool: list[Transport] = []
        self.health = RegistrationHealth(opts.health)
        self.started_at = run.protocol_now()
        self.disabled = trio.Event()
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
            got = await run.attempt(conn, "GET", path, [("User-Agent", USER_AGENT)], None)
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
        self, batch: Batch, retry: int, signatures: Signatures | None, single: bool
    ) -> list[tuple[str, str]]:
        run = self.run
        content_type = run.content_type_single if single else "application/json"
        headers = [
            ("Content-Type", content_type),
            ("User-Agent", USER_AGENT),
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
        if run.opts.hmac_secret is not None:
            # The deprecated form: base64 HMAC-SHA256 of the raw body, keyed with the secret.
            mac = hmac.new(run.opts.hmac_secret.encode(), batch.body, hashlib.sha256).digest()
            headers.append(("x-adobe-signature", base64.b64encode(mac).decode()))
        if run.opts.token is not None:
            headers.append(("Authorization", f"Bearer {run.opts.token}"))
        return headers

    def _track(self, ok: bool) -> None:
        """Count an attempt towards the registration's health; report each change."""
        before = self.health.state
        after = self.health.record(self.run.protocol_now(), ok)
        if after == before:
            return
        self.run.ledger.registrations[self.index] = after
        hours = (self.run.protocol_now() - self.started_at) / 3600
        log.warning(
            "registration %d: %s after %.1f h (protocol): %d of %d attempts in 24 h failed%s",
            self.index,
            after,
            hours,
            self.health.failures,
            self.health.attempts,
            "; it sends nothing more (re-enabling is manual)" if after == "disabled" else "",
        )
        if after == "disabled":
            self.disabled.set()

    async def deliver(self, batch: Batch, *, duplicate: bool, holding: bool) -> None:
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
                if self.disabled.is_set():
                    reason = "the registration was disabled (Adobe's health rule)"
                    ledger.given_up(batch.serial, len(batch.keys), reason, duplicate=duplicate)
                    return
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
                self._track(is_success(outcome.status))
                decision = state.after(run.protocol_now(), outcome.status)
                if decision.action == "ack":
                    ledger.acked(
                        batch.serial,
                        batch.keys,
                        outcome.latency_s,
                        time.perf_counter() - first,
                        duplicate=duplicate,
                        receiver_duplicates=receiver_duplicates(outcome.response),
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
            again = Batch(run.next_serial(), batch.body, batch.keys, batch.event_id)
            await self.deliver(again, duplicate=True, holding=False)

    async def _deliver_and_release(self, batch: Batch) -> None:
        try:
            await self.deliver(batch, duplicate=False, holding=True)
        finally:
            self.pending.release()

    async def run_loop(self) -> None:
        run, opts = self.run, self.run.opts
        if opts.challenge:
            await self.challenge()
        shape = opts.shape if opts.shape != "legacy" else "io"
        maker = BatchMaker(
            shape,
            seed=opts.seed,
            worker=self.index,
            recipient=opts.recipient,
            fields=run.id_fields,
        )
        size = opts.batch or opts.io.max_events
        due = trio.current_time()
        try:
            async with trio.open_nursery() as tasks:
                while not run.stopped.is_set() and not self.disabled.is_set():
                    n = run.take(size)
                    if n == 0:
                        break
                    made = maker.make(n, single=opts.single)
                    if not opts.unpaced:
                        await trio.sleep_until(due)
                        due += run.interval(n, opts.io_cadence)
                        if run.stopped.is_set() or self.disabled.is_set():
                            break
                    await self.pending.acquire()
                    try:
                        await self.slots.acquire()
                    except BaseException:
                        self.pending.release()
                        raise
                    event_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
                    batch = Batch(run.next_serial(), made.body, made.keys, event_id)
                    tasks.start_soon(self._deliver_and_release, batch)
        finally:
            for conn in self.pool:
                await conn.aclose()
