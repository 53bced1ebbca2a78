"""The service: config in, one root nursery, hypercorn in-process, signals.

Start-up order: listeners bound (ingest, then admin) → journal open (migrated)
→ sources' and admin tokens loaded → "ready". Stop (SIGTERM/SIGINT): refuse new POSTs with 503, stop
accepting, let in-flight requests finish within ``graceful_timeout``, commit
what is queued, exit 0. A second signal exits at once: everything
acknowledged is already committed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from streamd.admin import AdminApp, journal_routes
from streamd.auth import TokenSet, ensure_token_file, loose_permissions, read_token_file
from streamd.errors import ConfigError
from streamd.ingest import IngestApp, Source
from streamd.journal import Journal, WriterOptions, open_journal
from streamd.service.config import Config

log = logging.getLogger("streamd.service")
_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Running:
    """What a started service reports: its URLs, and the parts to observe (metrics, tests)."""

    binds: list[str]
    app: IngestApp
    journal: Journal
    admin_binds: list[str]
    admin: AdminApp | None


def writer_options(config: Config) -> WriterOptions:
    """The journal writer's bounds from the [journal] section."""
    j = config.journal
    return WriterOptions(
        synchronous=j.synchronous,
        cache_mib=j.cache_mib,
        max_events_per_commit=j.max_events_per_commit,
        max_queued_events=j.max_queued_events,
        min_free_disk_bytes=j.min_free_disk_mib * _MiB,
        checkpoint_interval=j.checkpoint_interval,
        wal_max_bytes=j.wal_max_mib * _MiB,
    )


def load_sources(config: Config, *, announce: Callable[[str], None] | None = None) -> list[Source]:
    """Build each source's token set, generating the default token on first start.

    Raises :class:`ConfigError` naming the token file and the problem.
    """
    cache: dict[str, list[str]] = {}
    sources = []
    for source in config.sources:
        tokens: list[str] = []
        for path in config.token_files(source):
            if path not in cache:
                if path == config.default_token_file or path in config.tokens.files:
                    generated = ensure_token_file(path)
                    if generated is not None and announce is not None:
                        announce(f"streamd: generated an API token (kept in {path}): {generated}")
                if loose_permissions(path):
                    log.warning("token file %s is readable by group or others; chmod 600 it", path)
                cache[path] = read_token_file(path)
            tokens.extend(cache[path])
        sources.append(Source(source.name, source.path, TokenSet(tokens), source.query_token))
    return sources


def load_admin(config: Config, *, announce: Callable[[str], None] | None = None) -> AdminApp:
    """The admin app with its token (generated on first start) and the pull endpoint."""
    path = config.admin_token_file
    generated = ensure_token_file(path)
    if generated is not None and announce is not None:
        announce(f"streamd: generated an admin token (kept in {path}): {generated}")
    if loose_permissions(path):
        log.warning("token file %s is readable by group or others; chmod 600 it", path)
    routes = journal_routes(config.journal_path, retry_after=config.admin.pull_retry_after)
    return AdminApp(TokenSet(read_token_file(path)), routes)


def admin_hypercorn_config(config: Config) -> HypercornConfig:
    """Hypercorn settings of the admin listener: the same bounds, its own binds."""
    hc = hypercorn_config(config)
    hc.bind = config.admin.addresses
    hc.errorlog = logging.getLogger("streamd.admin.http")
    return hc


def hypercorn_config(config: Config) -> HypercornConfig:
    """Hypercorn settings: our binds and bounds, no access log, errors to our logger."""
    hc = HypercornConfig()
    hc.bind = list(config.server.listen)
    hc.graceful_timeout = config.server.graceful_timeout
    hc.keep_alive_timeout = config.server.keep_alive_timeout
    hc.read_timeout = int(config.server.read_timeout)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("streamd.http")
    hc.include_server_header = False
    hc.backlog = 1024
    # Senders keep connections open; no reason to make them reconnect every 1,000 requests.
    hc.keep_alive_max_requests = 100_000
    return hc


async def serve(
    config: Config,
    *,
    announce: Callable[[str], None] = print,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run streamd until a signal stops it; reports a :class:`Running` through ``task_status``.

    Raises :class:`ConfigError` or :class:`JournalError` when it cannot start.
    """
    os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    hconfig = hypercorn_config(config)
    try:
        # Bound here, outside any nursery, so "address in use" is one clear error.
        sockets = hconfig.create_sockets()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {', '.join(config.server.listen)}: {exc.strerror or exc}"
        ) from None
    aconfig = admin_hypercorn_config(config)
    admin_sockets: Sockets | None = None
    if config.admin.addresses:
        try:
            admin_sockets = aconfig.create_sockets()
        except OSError as exc:
            _close(sockets)
            raise ConfigError(
                f"cannot listen on {', '.join(config.admin.addresses)} (admin.listen): "
                f"{exc.strerror or exc}"
            ) from None
    async with open_journal(
        config.journal_path, writer_options(config), commit_budget=config.journal.commit_budget
    ) as journal:
        # After the journal opened: a first start with a broken journal creates no token.
        sources = load_sources(config, announce=announce)
        admin = load_admin(config, announce=announce) if admin_sockets is not None else None
        app = IngestApp(
            sources,
            journal,
            max_body_bytes=config.server.max_body_bytes,
            max_in_flight=config.server.max_in_flight,
        )
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, app, stop)
            binds: list[str] = await nursery.start(
                _serve_http, app, hconfig, sockets, stop, nursery.cancel_scope
            )
            admin_binds: list[str] = []
            if admin is not None and admin_sockets is not None:
                admin_binds = await nursery.start(_serve_admin, admin, aconfig, admin_sockets, stop)
            for bind in binds:
                announce(f"streamd ready: {bind}")
            for bind in admin_binds:
                announce(f"streamd admin ready: {bind}")
            log.info(
                "journal %s (synchronous=%s); sources: %s",
                config.journal_path,
                config.journal.synchronous,
                ", ".join(f"{s.name} at {s.path}" for s in sources),
            )
            task_status.started(Running(binds, app, journal, admin_binds, admin))
        log.info("stopped accepting; committing what is queued")
    log.info("journal closed; exiting")


async def _serve_http(
    app: IngestApp,
    hconfig: HypercornConfig,
    sockets: Sockets,
    stop: trio.Event,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.listen(hconfig.backlog)
    async with trio.open_nursery() as inner:
        inner.start_soon(_cancel_when_drained, app, stop, inner.cancel_scope)
        # hypercorn returns once in-flight requests finished (or the grace ran out).
        await worker_serve(
            wrap_app(app, hconfig.wsgi_max_body_size, "asgi"),  # type: ignore[arg-type]
            hconfig,
            sockets=sockets,
            shutdown_trigger=stop.wait,
            task_status=task_status,
        )
        inner.cancel_scope.cancel()
    scope.cancel()  # the signal watcher has nothing left to guard


async def _serve_admin(
    app: AdminApp,
    hconfig: HypercornConfig,
    sockets: Sockets,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # Stops with the ingest listener: the same trigger, and the nursery is cancelled
    # once ingest has drained.
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.listen(hconfig.backlog)
    await worker_serve(
        wrap_app(app, hconfig.wsgi_max_body_size, "asgi"),  # type: ignore[arg-type]
        hconfig,
        sockets=sockets,
        shutdown_trigger=stop.wait,
        task_status=task_status,
    )


def _close(sockets: Sockets) -> None:
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.close()


async def _cancel_when_drained(app: IngestApp, stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    await app.wait_idle()
    # Every POST has been answered. hypercorn 0.18 would otherwise wait out
    # graceful_timeout for a keep-alive connection parked in h11's PAUSED state
    # (a request pipelined behind the last answer); that request got, or would
    # get, 503 anyway, so closing it now loses nothing.
    scope.cancel()


async def _watch_signals(app: IngestApp, stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.warning(
                    "SIGHUP: configuration reload is not supported by this version; "
                    "restart streamd to apply changes"
                )
                continue
            if stop.is_set():
                log.warning("second signal: exiting now (acknowledged events are committed)")
                sys.stderr.flush()
                os._exit(1)
            log.info("%s: stopping gracefully", signal.Signals(signum).name)
            app.begin_shutdown()
            stop.set()
