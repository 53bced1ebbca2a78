"""The emulator's runtime: subscriptions and registrations that send like Marketo and Adobe.

The retry rules are the sans-IO machines of :mod:`streamd.emit.schedule`; the senders
(:mod:`~streamd.emit.legacy`, :mod:`~streamd.emit.adobe_io`) sleep, send and count;
this module runs them: the key server, the stop conditions, the drain, the signals.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from streamd.emit.accounting import Ledger
from streamd.emit.adobe_io import Registration
from streamd.emit.asgi import serve_handler
from streamd.emit.errors import EmitError
from streamd.emit.legacy import legacy_subscription
from streamd.emit.runtime import (
    Connect,
    EmitOptions,
    OAuthSettings,
    Run,
    Transport,
    tls_context,
)
from streamd.emit.signing import Signer
from streamd.errors import first_leaf

log = logging.getLogger("streamd.emit")

ID_FIELDS_TEXT = {
    "both": "both id pairs (eventid/recipientclientid and event_id/recipient_client_id), "
    "as Adobe sends them until the end of 2026",
    "new": "only eventid/recipientclientid, Adobe's shape from 2027 on",
}

__all__ = ["EmitOptions", "OAuthSettings", "Transport", "run_emit", "tls_context"]


async def _drain_watch(run: Run, senders: trio.CancelScope) -> None:
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


async def _progress(run: Run, every: float) -> None:
    """A line on the log every ``every`` seconds, for runs that last minutes or days."""
    ledger, last, t0 = run.ledger, 0, trio.current_time()
    while True:
        await trio.sleep(every)
        rate = (ledger.events_acked - last) / every
        last = ledger.events_acked
        log.info(
            "after %.0f s: sent %d events, acknowledged %d (%.0f/s lately), %d requests "
            "in flight or waiting to retry, %d events given up, %d retries",
            trio.current_time() - t0,
            ledger.events_sent,
            ledger.events_acked,
            rate,
            len(ledger.in_flight),
            ledger.events_given_up,
            ledger.retries,
        )


async def _stop_after(run: Run, seconds: float) -> None:
    await trio.sleep(seconds)
    run.stopped.set()


async def _on_signals(run: Run, outer: trio.CancelScope) -> None:
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
    run = Run(opts, ledger, connect)
    started = trio.current_time()
    try:
        async with trio.open_nursery() as outer:
            if opts.handle_signals:
                outer.start_soon(_on_signals, run, outer.cancel_scope)
            if opts.mode == "io":
                log.info(
                    "events carry %s (--id-fields %s)",
                    ID_FIELDS_TEXT[run.id_fields],
                    opts.id_fields,
                )
            if opts.mode == "io" and opts.sign:
                run.signer = await trio.to_thread.run_sync(Signer)
                binds = await outer.start(serve_handler, run.signer.serve_key, opts.key_server)
                run.key_base = binds[0]
                log.info("public keys served at %s%s and %s", binds[0], *run.signer.paths)
            if opts.duration is not None:
                outer.start_soon(_stop_after, run, opts.duration)
            if opts.progress > 0:
                outer.start_soon(_progress, run, opts.progress)
            async with trio.open_nursery() as senders:
                outer.start_soon(_drain_watch, run, senders.cancel_scope)
                for index in range(opts.parallel):
                    if opts.mode == "legacy":
                        senders.start_soon(legacy_subscription, run, index)
                    else:
                        senders.start_soon(Registration(run, index).run_loop)
            outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A failed challenge ends the run: raise it as the one error it is.
        ours, rest = group.split(EmitError)
        if ours is None or rest is not None:
            raise
        raise first_leaf(ours) from None
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
        "id_fields": run.id_fields if opts.mode == "io" else None,
        "key_server": run.key_base or None,
        **summary,
    }
