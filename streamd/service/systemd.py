"""What systemd hears from a running daemon (``Type=notify``, ``WatchdogSec``).

READY once the listeners serve, a STATUS line every 10 s, a watchdog ping at half
the interval only while the journal writer and the drain make progress, and while
stopping, stop-timeout extensions as long as requests are still being answered. The
protocol itself is :mod:`streamd.service.sdnotify`'s.
"""

from __future__ import annotations

import logging

import trio

from streamd.drain import Drain
from streamd.ingest import IngestApp
from streamd.journal import Journal
from streamd.service.sdnotify import Notifier
from streamd.service.workers import WorkerPool

log = logging.getLogger("streamd.service")


async def serve_systemd(
    notify: Notifier,
    app: IngestApp | WorkerPool,
    journal: Journal,
    drain: Drain,
    binds: list[str],
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """READY (``binds`` are listening); then STATUS lines and watchdog pings until
    ``stop``; then stop-timeout extensions while requests finish. Reports once READY
    went out (at once outside systemd).

    A ping goes out only while the journal writer makes progress (a *successful*
    commit within the interval, or idle with nothing queued: a failed commit is
    no progress) and the drain saves what its sinks confirmed: a wedged writer,
    commits that keep failing under load, or a stuck drain stop the pings and
    systemd restarts the process (WatchdogSec), rather than senders or sinks
    hanging on it.
    """
    if not notify.enabled:
        task_status.started()
        return
    stats = journal.statistics()
    notify.ready(f"listening on {', '.join(binds)}; {stats.events} events journaled")
    task_status.started()
    usec = notify.watchdog_usec
    tick = min(usec / 2_000_000, 5.0) if usec else 5.0
    stale_after = max(usec / 1_000_000 if usec else 0.0, 2.5)  # the writer idles 1 s at most
    last_events, last_time, next_status, wedged = stats.events, trio.current_time(), 0.0, False
    while not stop.is_set():
        now = trio.current_time()
        if usec:
            wedged = _ping_if_progressing(notify, journal, drain, stale_after, wedged)
        if now >= next_status:
            rate = (stats.events - last_events) / max(now - last_time, 1e-9)
            last_events, last_time, next_status = stats.events, now, now + 10.0
            failure = journal.commit_failure()
            notify.status(
                f"{stats.events} events journaled ({rate:.0f}/s), {stats.queued_events} queued, "
                f"{app.in_flight} requests in flight"
                + ("; LOW DISK" if stats.low_disk else "")
                + (f"; COMMITS FAILING: {failure[1]}" if failure else "")
            )
        with trio.move_on_after(tick):
            await stop.wait()
    # Stopping: keep extending systemd's stop timeout while requests still finish.
    while app.in_flight:
        notify.extend_timeout(3.0)
        await trio.sleep(1.0)


def _ping_if_progressing(
    notify: Notifier, journal: Journal, drain: Drain, stale_after: float, wedged: bool
) -> bool:
    """A watchdog ping when the writer and the drain make progress; else log once
    (``wedged`` says it was logged) that pings are withheld. Whether they are wedged."""
    writer_ok = journal.making_progress(stale_after)
    if writer_ok and drain.making_progress(stale_after):
        notify.watchdog()
        return False
    if not wedged:
        failure = journal.commit_failure()
        log.error(
            "%s has made no progress for %.1f s%s; withholding watchdog pings",
            "journal writer" if not writer_ok else "the drain's save loop",
            stale_after,
            f" (commits failing: {failure[1]})" if failure and not writer_ok else "",
        )
    return True
