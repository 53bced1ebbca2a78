"""The legacy push sender: Marketo posting to the customer's endpoint (CONTRACT.md §1a).

Each subscription sends its batches in order, one at a time; a failing batch holds
the subscription (retrying, then paused) until it succeeds or is given up.
"""

from __future__ import annotations

import logging
import random
import time

import trio

from streamd.emit.generate import BatchMaker
from streamd.emit.oauth import TokenFetchError
from streamd.emit.runtime import USER_AGENT, Attempt, Batch, Run, Transport, receiver_duplicates
from streamd.emit.schedule import LegacyDelivery

log = logging.getLogger("streamd.emit")


async def _legacy_headers(run: Run) -> list[tuple[str, str]]:
    headers = [("Content-Type", "application/json"), ("User-Agent", USER_AGENT)]
    if run.oauth is not None:
        token = await run.oauth.token()
        headers.append(("Authorization", f"Bearer {token}"))
    elif run.opts.token is not None:
        headers.append(("Authorization", f"Bearer {run.opts.token}"))
    return headers


async def _deliver_legacy(
    run: Run, conn: Transport, batch: Batch, index: int, *, duplicate: bool
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
            outcome = Attempt(None, "token", None, 0.0)
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
                receiver_duplicates=receiver_duplicates(outcome.response),
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


async def legacy_subscription(run: Run, index: int) -> None:
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
            batch = Batch(run.next_serial(), made.body, made.keys)
            await _deliver_legacy(run, conn, batch, index, duplicate=False)
            if opts.duplicates and rng.random() < opts.duplicates:
                again = Batch(run.next_serial(), batch.body, batch.keys)
                await _deliver_legacy(run, conn, again, index, duplicate=True)
    finally:
        await conn.aclose()
