"""The service: config in, one root nursery, hypercorn in-process, signals.

Start-up order: journal open (migrated) → sources' tokens loaded → listeners
bound → "ready". Stop (SIGTERM/SIGINT): refuse new POSTs with 503, stop
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

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from streamd.auth import TokenSet, ensure_token_file, loose_permissions, read_token_file
from streamd.errors import ConfigError
from streamd.ingest import IngestApp, Source
from streamd.journal import WriterOptions, open_journal
from streamd.service.config import Config

log = logging.getLogger("streamd.service")
_MiB = 1024 * 1024


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
        wal_truncate_bytes=j.wal_truncate_mib * _MiB,
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
    return hc


async def serve(
    config: Config,
    *,
    announce: Callable[[str], None] = print,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run streamd until a signal stops it; reports the bound URLs through ``task_status``.

    Raises :class:`ConfigError` or :class:`JournalError` when it cannot start.
    """
    os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    sources = load_sources(config, announce=announce)
    async with open_journal(
        config.journal_path, writer_options(config), commit_budget=config.journal.commit_budget
    ) as journal:
        app = IngestApp(
            sources,
            journal,
            max_body_bytes=config.server.max_body_bytes,
            max_in_flight=config.server.max_in_flight,
        )
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, app, stop)
            try:
                binds: list[str] = await nursery.start(
                    _serve_http, app, hypercorn_config(config), stop, nursery.cancel_scope
                )
            except OSError as exc:
                raise ConfigError(f"cannot listen on {config.server.listen}: {exc}") from None
            for bind in binds:
                announce(f"streamd ready: {bind}")
            log.info(
                "journal %s (synchronous=%s); sources: %s",
                config.journal_path,
                config.journal.synchronous,
                ", ".join(f"{s.name} at {s.path}" for s in sources),
            )
            task_status.started(binds)
        log.info("stopped accepting; committing what is queued")
    log.info("journal closed; exiting")


async def _serve_http(
    app: IngestApp,
    hconfig: HypercornConfig,
    stop: trio.Event,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # hypercorn returns once in-flight requests finished (or the grace ran out);
    # then the signal watcher has nothing left to guard.
    await hypercorn_serve(
        app,  # type: ignore[arg-type]
        hconfig,
        shutdown_trigger=stop.wait,
        task_status=task_status,
    )
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
