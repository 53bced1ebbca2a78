"""The composition root: ``serve`` builds the daemon's parts and runs them in one root
nursery.

Start-up order: everything read and checked (:mod:`~streamd.service.startup`) →
listeners bound: ingest, admin, mTLS (:mod:`~streamd.service.listeners`) → journal
open (migrated) → sources' and admin tokens loaded, the ingest app (or the worker
processes) built → drain open → retention, pulls, metrics, the admin app and the
reloader built, each with what it needs → the root nursery: pulls, signals
(:mod:`~streamd.service.reload`), retention, stream-health warnings, the ingest
listeners, the admin listener → "ready" → systemd told (:mod:`~streamd.service.systemd`).

Stop (SIGTERM/SIGINT): refuse new POSTs with 503, stop accepting, let in-flight
requests finish within ``graceful_timeout``, commit what is queued, exit 0. A second
signal exits at once: everything acknowledged is already committed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from streamd.admin import AdminApp, journal_routes
from streamd.admin.health import health_routes
from streamd.admin.operations import operation_routes
from streamd.auth import TokenSet
from streamd.clock import utc_now
from streamd.drain import Drain, open_drain
from streamd.drain.retention import Retention, serve_retention
from streamd.ingest import IngestApp
from streamd.ingest.pull import Pulls
from streamd.journal import Journal, open_journal
from streamd.ops.discovery import DaemonInfo, remove_daemon_file, write_daemon_file
from streamd.service.config import Config
from streamd.service.health import StreamHealth
from streamd.service.http import ADMIN_MAX_CONNECTIONS, ConnectionTable, max_connections_for
from streamd.service.listeners import (
    Listeners,
    open_listeners,
    serve_ingest,
    serve_listener,
    serve_workers,
)
from streamd.service.logs import PER_REQUEST
from streamd.service.metrics import Metrics, Parts, RequestStats
from streamd.service.reload import Reloader, serve_signals
from streamd.service.sdnotify import Notifier
from streamd.service.sources import build_issuer, ingest_limits, load_sources
from streamd.service.startup import (
    Checked,
    PullPlan,
    check_startup,
    create_data_dir,
    drain_yields,
    load_admin_tokens,
    retention_settings,
    start_pulls,
    writer_options,
)
from streamd.service.systemd import serve_systemd
from streamd.service.workers import WorkerPool

__all__ = ["Running", "check_startup", "serve"]  # check_startup: streamd check-config's

log = logging.getLogger("streamd.service")


@dataclass(frozen=True, slots=True)
class Running:
    """What a started service reports: its URLs, and the parts to observe (metrics, tests)."""

    binds: list[str]
    app: IngestApp
    journal: Journal
    drain: Drain
    retention: Retention
    admin_binds: list[str]
    admin: AdminApp | None
    metrics: Metrics
    pulls: Pulls
    # server.workers >= 1: the processes serving the ingest listeners (``app`` then
    # serves none: it holds the sources the workers were given).
    workers: WorkerPool | None = None
    # The ingest listeners' connections (this process's; the workers keep their own).
    connections: ConnectionTable | None = None


async def serve(
    config: Config,
    *,
    announce: Callable[[str], None] = print,
    notifier: Notifier | None = None,
    reload: Callable[[], Config] | None = None,
    log_level_from_config: bool = False,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run streamd until a signal stops it; reports a :class:`Running` through ``task_status``.

    ``notifier`` speaks systemd's notify protocol (READY, STATUS, WATCHDOG,
    STOPPING); without one, nothing is sent. ``reload`` re-reads the
    configuration on SIGHUP (raising :class:`ConfigError` when it is invalid);
    without one, SIGHUP is logged and ignored. With ``log_level_from_config`` (no
    ``--log-level``), a reload also applies the new ``log_level``.
    Raises :class:`ConfigError` or :class:`JournalError` when it cannot start.
    """
    notify = notifier or Notifier({})
    # Every secret and certificate read, every checker built: a problem stops us here,
    # with the same verdict check-config gives.
    checked = check_startup(config)
    create_data_dir(config)
    notify.status("opening the journal")
    # Bound (and listening) before any nursery opens, so "address in use" is one clear
    # error; closed again when a later part fails to start.
    async with (
        open_listeners(config) as listeners,
        open_journal(
            config.journal_path, writer_options(config), commit_budget=config.journal.commit_budget
        ) as journal,
    ):
        # After the journal opened: a first start with a broken journal creates no token.
        ingest = _build_ingest(config, journal, listeners, announce)
        admin_tokens = load_admin_tokens(config, announce=announce) if listeners.admin else None
        # Stops after the listeners (its exit waits up to graceful_timeout for the
        # batches in flight; cursors only pass what was confirmed).
        async with open_drain(
            journal,
            checked.specs,
            grace=config.server.graceful_timeout,
            yield_settings=drain_yields(config),
        ) as drain:
            daemon = _assemble(config, checked, listeners, journal, ingest, drain, admin_tokens)
            reloader = _reloader(daemon, reload, notify, log_level_from_config)
            await _serve_daemon(daemon, notify, reloader, announce, task_status=task_status)
            log.info("stopped accepting; letting the sinks finish their batches in flight")
            notify.stopping("letting the sinks finish their batches in flight")
        log.info("drain stopped; committing what is queued")
        notify.stopping("committing what is queued and checkpointing the journal")
        notify.extend_timeout(10.0)
    log.info("journal closed; exiting")


@dataclass(frozen=True, slots=True)
class _Ingest:
    """The ingest side: the app with its sources, and the worker processes that serve
    the ingest listeners instead when ``server.workers`` ≥ 1."""

    app: IngestApp
    pool: WorkerPool | None
    edge: ConnectionTable  # one cap for the ingest listeners (mTLS included)
    health: StreamHealth
    requests: RequestStats

    @property
    def front(self) -> IngestApp | WorkerPool:
        """What serves the ingest listeners."""
        return self.app if self.pool is None else self.pool


def _build_ingest(
    config: Config, journal: Journal, listeners: Listeners, announce: Callable[[str], None]
) -> _Ingest:
    sources = load_sources(config, announce=announce)
    health = StreamHealth(
        [s.name for s in config.sources],
        silence_warning=config.health.silence_warning,
        failure_warning_ratio=config.health.failure_warning_ratio,
        clock=time.time,
    )
    requests = RequestStats(health)
    app = IngestApp(
        sources,
        journal,
        ingest_limits(config),
        issuer=build_issuer(config),
        observer=requests.observe,
        mtls_ports=listeners.mtls_ports,
    )
    # server.workers: worker processes serve the ingest listeners; this process
    # keeps the journal writer, the drain and the admin listener.
    pool = None
    if config.server.workers:
        pool = WorkerPool(
            config,
            journal,
            listeners.ingest.sockets,
            None if listeners.mtls is None else listeners.mtls.sockets,
            backlog=listeners.ingest.hconfig.backlog,
            observer=requests.observe,
        )
    edge = ConnectionTable(max_connections_for(config.server.max_connections))
    return _Ingest(app, pool, edge, health, requests)


@dataclass(frozen=True, slots=True)
class _Daemon:
    """The parts the root nursery runs, each built with what it needs."""

    config: Config
    checked: Checked  # the sinks' specs and the pulls' plans
    listeners: Listeners
    journal: Journal
    ingest: _Ingest
    drain: Drain
    retention: Retention
    pulls: Pulls
    metrics: Metrics
    admin: AdminApp | None
    stop: trio.Event  # set by the first SIGTERM/SIGINT: every listener stops accepting


def _assemble(
    config: Config,
    checked: Checked,
    listeners: Listeners,
    journal: Journal,
    ingest: _Ingest,
    drain: Drain,
    admin_tokens: TokenSet | None,
) -> _Daemon:
    names = [spec.name for spec in checked.specs]
    retention = Retention(journal, names, retention_settings(config))
    pulls = Pulls()
    pool = ingest.pool
    parts = Parts(
        ingest.front,
        journal,
        drain,
        retention,
        ingest.health,
        config.journal_path,
        pulls,
        pool,
        ingest.edge.statistics if pool is None else pool.connection_statistics,
        config.journal.min_free_disk_mib * 1024 * 1024,
    )
    metrics = Metrics(parts, ingest.requests)
    admin = None
    if admin_tokens is not None:
        routes = [
            *journal_routes(config.journal_path, retry_after=config.admin.pull_retry_after),
            *health_routes(metrics.render, metrics.not_ready),
            *operation_routes(drain, pulls),
        ]
        admin = AdminApp(admin_tokens, routes, journal_id=journal.journal_id)
    return _Daemon(
        config=config,
        checked=checked,
        listeners=listeners,
        journal=journal,
        ingest=ingest,
        drain=drain,
        retention=retention,
        pulls=pulls,
        metrics=metrics,
        admin=admin,
        stop=trio.Event(),
    )


def _reloader(
    d: _Daemon, load: Callable[[], Config] | None, notify: Notifier, log_level_from_config: bool
) -> Reloader:
    return Reloader(
        d.config,
        load,
        app=d.ingest.app,
        notify=notify,
        listeners=d.listeners.with_certificates,
        journal=d.journal,
        drain=d.drain,
        retention=d.retention,
        pulls=d.pulls,
        pool=d.ingest.pool,
        log_level_from_config=log_level_from_config,
    )


async def _serve_daemon(
    d: _Daemon,
    notify: Notifier,
    reloader: Reloader,
    announce: Callable[[str], None],
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The root nursery: every part that runs, in order; returns once ingest drained."""
    ingest, stop = d.ingest, d.stop
    async with trio.open_nursery() as nursery:
        # The pulls run before the signal watcher can reload them; from then on a
        # signal stops gracefully (or reloads).
        await nursery.start(_serve_pulls, d.pulls, d.checked.pull_plans, d.journal)
        await nursery.start(serve_signals, ingest.front, stop, notify, reloader)
        await nursery.start(serve_retention, d.retention)
        interval = d.config.health.check_interval
        await nursery.start(_serve_stream_warnings, ingest.health, interval)
        # A service started in a process that ran one before (tests, an embedding
        # program) gets the whole budget of per-request log lines, not what is left.
        PER_REQUEST.reset()
        await nursery.start(PER_REQUEST.serve_flush)
        await nursery.start(ingest.app.serve_background)
        binds, mtls_binds = await _start_ingest(nursery, d)
        admin_binds: list[str] = []
        if d.admin is not None and d.listeners.admin is not None:
            admin_edge = ConnectionTable(ADMIN_MAX_CONNECTIONS)
            admin_binds = await nursery.start(
                serve_listener, d.admin, d.listeners.admin, stop, admin_edge
            )
        _announce_ready(d, announce, binds, mtls_binds, admin_binds)
        await nursery.start(serve_systemd, notify, ingest.front, d.journal, d.drain, binds, stop)
        task_status.started(
            Running(
                binds=binds,
                app=ingest.app,
                journal=d.journal,
                drain=d.drain,
                retention=d.retention,
                admin_binds=admin_binds,
                admin=d.admin,
                metrics=d.metrics,
                pulls=d.pulls,
                workers=ingest.pool,
                connections=ingest.edge,
            )
        )
    d.metrics.close()
    remove_daemon_file(d.config.journal_path, os.getpid())


async def _start_ingest(nursery: trio.Nursery, d: _Daemon) -> tuple[list[str], list[str]]:
    """Serve the ingest listeners (in this process or in the workers) until ingest
    drained, which ends the root nursery; the URLs of the ingest and mTLS listeners."""
    ingest, mtls, done = d.ingest, d.listeners.mtls, nursery.cancel_scope
    if ingest.pool is not None:
        binds = await nursery.start(serve_workers, ingest.pool, d.listeners.ingest, done)
        return binds, [] if mtls is None else mtls.binds
    binds = await nursery.start(
        serve_ingest, ingest.app, d.listeners.ingest, d.stop, ingest.edge, done
    )
    mtls_binds: list[str] = []
    if mtls is not None:
        mtls_binds = await nursery.start(serve_listener, ingest.app, mtls, d.stop, ingest.edge)
    return binds, mtls_binds


def _announce_ready(
    d: _Daemon,
    announce: Callable[[str], None],
    binds: list[str],
    mtls_binds: list[str],
    admin_binds: list[str],
) -> None:
    # daemon.json first: a script that waits for "streamd ready" and then runs an
    # operator command must find this daemon (a test did not, once in a full run).
    _describe_daemon(d.config, d.journal, admin_binds if d.admin is not None else None)
    for bind in mtls_binds:
        announce(f"streamd ready (client certificates required): {bind}")
    for bind in binds:
        announce(f"streamd ready: {bind}")
    for bind in admin_binds:
        announce(f"streamd admin ready: {bind}")
    log.info(
        "journal %s (synchronous=%s); sources: %s; sinks: %s",
        d.config.journal_path,
        d.config.journal.synchronous,
        ", ".join(f"{s.name} at {s.path}" for s in d.ingest.app.sources()),
        ", ".join(f"{s.name} ({s.kind})" for s in d.checked.specs) or "none",
    )


async def _serve_pulls(
    pulls: Pulls,
    plans: list[PullPlan],
    journal: Journal,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the configured pull sources until cancelled."""
    async with trio.open_nursery() as nursery:
        await nursery.start(pulls.run)
        for line in start_pulls(pulls, plans, journal):
            log.info("%s", line)
        task_status.started()


async def _serve_stream_warnings(
    health: StreamHealth,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Log when a stream goes silent or its failure share nears Adobe's limit."""
    task_status.started()
    while True:
        await trio.sleep(interval)
        for warning in health.check():
            log.warning("%s", warning)


def _describe_daemon(config: Config, journal: Journal, admin_binds: list[str] | None) -> None:
    """Write ``daemon.json`` beside the journal: how the operator's commands reach this
    daemon (streamd.ops.discovery). A failure is logged: only those commands need it."""
    local = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}  # noqa: S104 - what to connect to
    urls = []
    for bind in admin_binds or []:
        scheme, _, rest = bind.partition("://")
        host, _, port = rest.rpartition(":")
        urls.append(f"{scheme}://{local.get(host, host)}:{port}")
    info = DaemonInfo(
        pid=os.getpid(),
        journal=os.path.abspath(config.journal_path),
        journal_id=journal.journal_id,
        admin_urls=urls,
        admin_token_file=None if admin_binds is None else os.path.abspath(config.admin_token_file),
        started_at=utc_now(),
    )
    try:
        write_daemon_file(info)
    except OSError as exc:
        log.warning("cannot write the daemon file beside the journal: %s", exc)
