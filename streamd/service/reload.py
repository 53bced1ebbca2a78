"""Signals: SIGTERM/SIGINT stop gracefully (a second one exits at once), SIGHUP reloads.

A reload re-reads and fully validates the configuration (every secret, key and
certificate, as at start), then swaps in what can change live: the sources and their
tokens, the embedded issuer, the sinks, the pulls, the TLS certificates, the log
level. An invalid configuration changes nothing: the old one stays and the log says
why. Settings a running process cannot take over are logged as needing a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig

from streamd.drain import Drain
from streamd.drain.retention import Retention
from streamd.errors import ConfigError
from streamd.ingest import IngestApp
from streamd.ingest.pull import Pulls
from streamd.journal import Journal
from streamd.service.config import Config
from streamd.service.listeners import reload_certificates
from streamd.service.sdnotify import Notifier
from streamd.service.sinks import build_specs
from streamd.service.sources import build_issuer, load_sources
from streamd.service.startup import build_pulls, start_pulls
from streamd.service.workers import WorkerPool

log = logging.getLogger("streamd.service")

# Settings a running process cannot take over; they need a restart.
_RESTART_ONLY = ("data_dir", "journal", "retention", "health", "admin", "drain")


class Reloader:
    """What a SIGHUP does (see the module docstring); ``config`` is the one in force."""

    def __init__(
        self,
        config: Config,
        load: Callable[[], Config] | None,
        *,
        app: IngestApp,
        notify: Notifier,
        listeners: list[HypercornConfig],
        journal: Journal,
        drain: Drain,
        retention: Retention,
        pulls: Pulls,
        pool: WorkerPool | None,
        log_level_from_config: bool,
    ) -> None:
        """``load`` reads the configuration again (None: SIGHUP is logged and ignored);
        ``listeners`` are those whose certificate a reload replaces; with
        ``log_level_from_config`` (no ``--log-level``) the new ``log_level`` applies."""
        self.config = config
        self._load = load
        self._app = app
        self._notify = notify
        self._listeners = listeners
        self._journal = journal
        self._drain = drain
        self._retention = retention
        self._pulls = pulls
        self._pool = pool
        self._log_level_from_config = log_level_from_config

    async def __call__(self) -> None:
        """Reload once; a configuration that does not load is logged, never raised."""
        if self._load is None:
            log.warning("SIGHUP: this process was started without a reloadable configuration")
            return
        self._notify.reloading()
        try:
            new = await trio.to_thread.run_sync(self._load)
            sources = await trio.to_thread.run_sync(load_sources, new)
            specs = await trio.to_thread.run_sync(build_specs, new)  # reads secret files
            issuer = await trio.to_thread.run_sync(build_issuer, new)
            pull_plans = await trio.to_thread.run_sync(build_pulls, new)
            if new.server.tls_certfile:
                for hc in self._listeners:
                    reload_certificates(hc, new)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, keeping the old one: %s", exc)
        else:
            self._warn_about_restart_only(new)
            self._app.reconfigure(sources, issuer)
            if new.sinks != self.config.sinks:
                old = {s.name: s for s in self.config.sinks}
                changed = {s.name for s in new.sinks if s.name in old and old[s.name] != s}
                for line in await self._drain.reconfigure(specs, changed):
                    log.info("SIGHUP: %s", line)
                self._retention.follow(spec.name for spec in specs)
            for line in start_pulls(self._pulls, pull_plans, self._journal):
                log.info("SIGHUP: %s", line)
            if self._log_level_from_config:
                logging.getLogger().setLevel((new.log_level or "info").upper())
            if self._pool is not None:
                self._pool.reload(new)  # the workers serve the sources, with our log level
            self.config = new
            log.info(
                "SIGHUP: configuration reloaded; sources: %s",
                ", ".join(f"{s.name} at {s.path}" for s in sources),
            )
        self._notify.ready("configuration reloaded; serving")

    def _warn_about_restart_only(self, new: Config) -> None:
        for name in _RESTART_ONLY:
            if getattr(new, name) != getattr(self.config, name):
                log.warning("SIGHUP: a change to [%s] takes effect only after a restart", name)
        old_server = msgspec.structs.replace(
            self.config.server,
            tls_certfile=new.server.tls_certfile,
            tls_keyfile=new.server.tls_keyfile,
        )
        if new.server != old_server:
            log.warning(
                "SIGHUP: [server] changes other than the TLS certificate files take "
                "effect only after a restart"
            )


async def serve_signals(
    front: IngestApp | WorkerPool,
    stop: trio.Event,
    notify: Notifier,
    reload: Reloader,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Until cancelled: the first SIGTERM or SIGINT begins the graceful stop (``front``
    answers new POSTs 503, ``stop`` is set), a second one exits at once; SIGHUP calls
    ``reload`` (not while stopping). Reports once the handlers are installed."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                if not stop.is_set():
                    await reload()
                continue
            if stop.is_set():
                log.warning("second signal: exiting now (acknowledged events are committed)")
                sys.stderr.flush()
                os._exit(1)
            log.info("%s: stopping gracefully", signal.Signals(signum).name)
            notify.stopping("stopping: finishing in-flight requests")
            front.begin_shutdown()
            stop.set()
