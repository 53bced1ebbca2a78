"""The composition root: ``serve`` builds the daemon's parts and runs them in one root
nursery.

Start-up order: everything read and checked (:mod:`~streamd.service.startup`) →
listeners bound: ingest, admin, mTLS (:mod:`~streamd.service.listeners`) → journal
open (migrated) → sources' and admin tokens loaded → drain open → the root nursery:
signals (:mod:`~streamd.service.reload`), retention, pulls, the ingest listeners, the
admin listener → "ready" (:mod:`~streamd.service.systemd`).

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
from streamd.admin.operations import operation_routes
from streamd.drain import Drain, open_drain
from streamd.drain.retention import Retention, serve_retention
from streamd.ingest import IngestApp
from streamd.ingest.pull import Pulls
from streamd.journal import Journal, open_journal, utc_now
from streamd.ops.discovery import DaemonInfo, remove_daemon_file, write_daemon_file
from streamd.service.config import Config
from streamd.service.health import StreamHealth
from streamd.service.http import ADMIN_MAX_CONNECTIONS, ConnectionTable, max_connections_for
from streamd.service.listeners import (
    open_listeners,
    serve_ingest,
    serve_listener,
    serve_workers,
)
from streamd.service.logs import PER_REQUEST
from streamd.service.metrics import Metrics, Parts
from streamd.service.reload import Reloader, serve_signals
from streamd.service.sdnotify import Notifier
from streamd.service.startup import (
    build_issuer,
    check_startup,
    create_data_dir,
    drain_yields,
    ingest_limits,
    load_admin_tokens,
    load_sources,
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
    notify = notifier or Notifier({})
    # Every secret and certificate read, every checker built: a problem stops us here,
    # with the same verdict check-config gives.
    checked = check_startup(config)
    specs, pull_plans = checked.specs, checked.pull_plans
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
        sources = load_sources(config, announce=announce)
        admin = None
        if listeners.admin is not None:
            admin = AdminApp(
                load_admin_tokens(config, announce=announce),
                journal_routes(config.journal_path, retry_after=config.admin.pull_retry_after),
            )
        app = IngestApp(sources, journal, ingest_limits(config))
        app.issuer = build_issuer(config)
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
            )
        front: IngestApp | WorkerPool = app if pool is None else pool
        # One cap for the ingest listeners (with mTLS), a small one for the admin's.
        edge = ConnectionTable(max_connections_for(config.server.max_connections))
        admin_edge = ConnectionTable(ADMIN_MAX_CONNECTIONS)
        stop = trio.Event()
        # Stops after the listeners (its exit waits up to graceful_timeout for the
        # batches in flight; cursors only pass what was confirmed).
        async with open_drain(
            journal,
            specs,
            grace=config.server.graceful_timeout,
            yield_settings=drain_yields(config),
        ) as drain:
            async with trio.open_nursery() as nursery:
                reloader = Reloader(config, reload, app, notify, listeners.with_certificates)
                reloader.log_level_from_config = log_level_from_config
                reloader.drain = drain
                reloader.pool = pool
                nursery.start_soon(serve_signals, front, stop, notify, reloader)
                retention = Retention(
                    journal, [spec.name for spec in specs], retention_settings(config)
                )
                await nursery.start(serve_retention, retention)
                reloader.retention = retention
                pulls = Pulls()
                await nursery.start(pulls.run)
                for line in start_pulls(pulls, pull_plans, journal):
                    log.info("%s", line)
                reloader.pulls, reloader.journal = pulls, journal
                health = StreamHealth(
                    [s.name for s in config.sources],
                    silence_warning=config.health.silence_warning,
                    failure_warning_ratio=config.health.failure_warning_ratio,
                    clock=time.time,
                )
                connections = edge.statistics if pool is None else pool.connection_statistics
                metrics = Metrics(
                    Parts(
                        front,
                        journal,
                        drain,
                        retention,
                        health,
                        config.journal_path,
                        pulls,
                        pool,
                        connections,
                    )
                )
                app.observer = metrics.observe
                if admin is not None:
                    admin.journal_id = journal.journal_id
                    for route in (*metrics.routes(), *operation_routes(drain, pulls)):
                        admin.add_route(route)
                nursery.start_soon(_warn_about_streams, health, config.health.check_interval)
                nursery.start_soon(PER_REQUEST.serve_flush)
                app.background = nursery
                mtls_binds: list[str] = []
                if pool is not None:
                    pool.observer = metrics.observe
                    binds = await nursery.start(
                        serve_workers, pool, listeners.ingest, nursery.cancel_scope
                    )
                    if listeners.mtls is not None:
                        mtls_binds = listeners.mtls.binds
                else:
                    binds = await nursery.start(
                        serve_ingest, app, listeners.ingest, stop, edge, nursery.cancel_scope
                    )
                    if listeners.mtls is not None:
                        mtls_binds = await nursery.start(
                            serve_listener, app, listeners.mtls, stop, edge
                        )
                app.mtls_ports = {int(b.rsplit(":", 1)[1]) for b in mtls_binds}
                for bind in mtls_binds:
                    announce(f"streamd ready (client certificates required): {bind}")
                admin_binds: list[str] = []
                if admin is not None and listeners.admin is not None:
                    admin_binds = await nursery.start(
                        serve_listener, admin, listeners.admin, stop, admin_edge
                    )
                nursery.start_soon(serve_systemd, notify, front, journal, drain, binds, stop)
                for bind in binds:
                    announce(f"streamd ready: {bind}")
                for bind in admin_binds:
                    announce(f"streamd admin ready: {bind}")
                _describe_daemon(config, journal, admin_binds if admin is not None else None)
                log.info(
                    "journal %s (synchronous=%s); sources: %s; sinks: %s",
                    config.journal_path,
                    config.journal.synchronous,
                    ", ".join(f"{s.name} at {s.path}" for s in sources),
                    ", ".join(f"{s.name} ({s.kind})" for s in specs) or "none",
                )
                task_status.started(
                    Running(
                        binds=binds,
                        app=app,
                        journal=journal,
                        drain=drain,
                        retention=retention,
                        admin_binds=admin_binds,
                        admin=admin,
                        metrics=metrics,
                        pulls=pulls,
                        workers=pool,
                        connections=edge,
                    )
                )
            metrics.close()
            remove_daemon_file(config.journal_path, os.getpid())
            log.info("stopped accepting; letting the sinks finish their batches in flight")
            notify.stopping("letting the sinks finish their batches in flight")
        log.info("drain stopped; committing what is queued")
        notify.stopping("committing what is queued and checkpointing the journal")
        notify.extend_timeout(10.0)
    log.info("journal closed; exiting")


async def _warn_about_streams(health: StreamHealth, interval: float) -> None:
    """Log when a stream goes silent or its failure share nears Adobe's limit."""
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
