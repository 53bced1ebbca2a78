"""The listeners: hypercorn's settings, TLS, socket activation, binding, and the tasks
that serve them.

:func:`open_listeners` binds the ingest, admin and mTLS sockets (listening, outside any
nursery, so "address in use" is one clear error) and closes those already bound when a
later one fails. The ``serve_*`` tasks serve them until the stop trigger: the ingest
listener in this process (:func:`serve_ingest`) or in the worker processes
(:func:`serve_workers`), the admin and mTLS ones with :func:`serve_listener`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import repr_socket_addr

from streamd.errors import ConfigError
from streamd.service.config import Config
from streamd.service.http import ConnectionTable, bind_sockets, close_sockets, serve_http

# Annotations only: an ingest worker imports this module for its TLS set-up and must
# not load the admin app or the worker pool (ARCHITECTURE.md, "What a process imports").
if TYPE_CHECKING:
    from streamd.admin import AdminApp
    from streamd.ingest import IngestApp
    from streamd.service.workers import WorkerPool

log = logging.getLogger("streamd.service")


def admin_hypercorn_config(config: Config) -> HypercornConfig:
    """Hypercorn settings of the admin listener: the same bounds, its own binds (plain
    HTTP: it listens on loopback by default)."""
    hc = hypercorn_config(config, tls=False)
    hc.bind = config.admin.addresses
    hc.errorlog = logging.getLogger("streamd.admin.http")
    return hc


class _Hypercorn(HypercornConfig):
    """hypercorn's Config, with its TLS context built once and kept: a reload then loads
    new certificates into the very context the listener hands to each new connection."""

    ssl_context: ssl.SSLContext | None = None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if self.ssl_context is None:
            self.ssl_context = super().create_ssl_context()
        return self.ssl_context


def hypercorn_config(config: Config, *, tls: bool = True) -> HypercornConfig:
    """Hypercorn settings: our binds and bounds, no access log, errors to our logger;
    TLS when ``server.tls_certfile`` is set (the context is built now, so a bad file is
    a :class:`ConfigError` at start, naming it)."""
    hc = _Hypercorn()
    hc.bind = list(config.server.listen)
    if tls and config.server.tls_certfile:
        hc.certfile = config.server.tls_certfile
        hc.keyfile = config.server.tls_keyfile
        _build_tls(hc, config.server.tls_certfile)
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


def mtls_hypercorn_config(config: Config) -> HypercornConfig:
    """The listener that requires a client certificate signed by ``server.mtls_client_ca``."""
    hc = hypercorn_config(config, tls=False)
    hc.bind = list(config.server.mtls_listen)
    hc.certfile = config.server.tls_certfile
    hc.keyfile = config.server.tls_keyfile
    hc.ca_certs = config.server.mtls_client_ca
    hc.verify_mode = ssl.CERT_REQUIRED
    hc.errorlog = logging.getLogger("streamd.http.mtls")
    _build_tls(hc, f"{config.server.tls_certfile} or {config.server.mtls_client_ca}")
    return hc


def _build_tls(hc: HypercornConfig, files: str) -> None:
    try:
        hc.create_ssl_context()
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{files}: cannot load the TLS certificate, key or CA: {exc}") from None


def reload_certificates(hc: HypercornConfig, config: Config) -> None:
    """Load ``config``'s certificate and key into the listener's live TLS context.

    New connections get them; open ones keep theirs. Raises :class:`ConfigError`
    (the old certificate stays) when the files do not load.
    """
    context = hc.create_ssl_context()
    if context is None:
        return
    try:
        context.load_cert_chain(config.server.tls_certfile, config.server.tls_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{config.server.tls_certfile}: cannot load the new TLS certificate or key: {exc}"
        ) from None


def activated_binds(environ: dict[str, str] | None = None) -> list[str] | None:
    """``fd://N`` binds for the sockets systemd passed (socket activation), else None.

    Honours ``$LISTEN_FDS`` only when ``$LISTEN_PID`` names this process, as
    sd_listen_fds(3) does; removes both so children do not inherit them.
    """
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", None), env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None or pid != str(os.getpid()):
        return None
    if not count.isdigit() or not 0 < int(count) <= 64:
        raise ConfigError(f"LISTEN_FDS={count!r}: expected 1 to 64 sockets from systemd")
    return [f"fd://{3 + i}" for i in range(int(count))]


@dataclass(frozen=True, slots=True)
class Listener:
    """One listener: its hypercorn settings and its bound, listening sockets."""

    hconfig: HypercornConfig
    sockets: Sockets

    @property
    def binds(self) -> list[str]:
        """The URLs of its sockets, as hypercorn announces them."""
        return [
            f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}"
            for scheme, group in (
                ("https", self.sockets.secure_sockets),
                ("http", self.sockets.insecure_sockets),
            )
            for sock in group
        ]

    @property
    def ports(self) -> frozenset[int]:
        """The ports its sockets listen on."""
        return frozenset(
            sock.getsockname()[1]
            for sock in (*self.sockets.secure_sockets, *self.sockets.insecure_sockets)
        )


@dataclass(frozen=True, slots=True)
class Listeners:
    """The daemon's bound listeners: ingest, and the mTLS and admin ones when configured."""

    ingest: Listener
    mtls: Listener | None
    admin: Listener | None

    @property
    def mtls_ports(self) -> frozenset[int]:
        """The ports where a client certificate was verified (none without mTLS)."""
        return frozenset() if self.mtls is None else self.mtls.ports

    @property
    def with_certificates(self) -> list[HypercornConfig]:
        """The settings of the listeners whose certificate a reload replaces."""
        return [self.ingest.hconfig, *([] if self.mtls is None else [self.mtls.hconfig])]


@asynccontextmanager
async def open_listeners(config: Config) -> AsyncIterator[Listeners]:
    """Bind and listen on ``server.listen`` (or the sockets systemd passed), then
    ``admin.listen`` and ``server.mtls_listen``.

    The sockets are closed on exit (serving them closes them earlier; this is for a
    start that fails before). Raises :class:`ConfigError` naming the addresses when one
    cannot be bound or listened on, having closed those already bound.
    """
    hconfig = hypercorn_config(config)
    activated = activated_binds()
    if activated is not None:
        log.info("socket activation: serving the %d socket(s) systemd passed", len(activated))
        hconfig.bind = activated
    with contextlib.ExitStack() as bound:
        ingest = _bind(bound, hconfig, ", ".join(hconfig.bind))
        admin = None
        if config.admin.addresses:
            where = f"{', '.join(config.admin.addresses)} (admin.listen)"
            admin = _bind(bound, admin_hypercorn_config(config), where)
        mtls = None
        if config.server.mtls_listen:
            where = f"{', '.join(config.server.mtls_listen)} (server.mtls_listen)"
            mtls = _bind(bound, mtls_hypercorn_config(config), where)
        yield Listeners(ingest, mtls, admin)


def _bind(stack: contextlib.ExitStack, hconfig: HypercornConfig, where: str) -> Listener:
    sockets = bind_sockets(hconfig, where)
    stack.callback(close_sockets, sockets)
    return Listener(hconfig, sockets)


async def serve_listener(
    app: AdminApp | IngestApp,
    listener: Listener,
    stop: trio.Event,
    table: ConnectionTable,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listener`` until ``stop`` is set; reports its URLs.

    The admin and mTLS listeners stop with ingest: the same trigger, and the root
    nursery is cancelled once ingest drained.
    """
    await serve_http(
        app, listener.hconfig, listener.sockets, table, shutdown=stop.wait, task_status=task_status
    )


async def serve_ingest(
    app: IngestApp,
    listener: Listener,
    stop: trio.Event,
    table: ConnectionTable,
    done: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ingest listener in this process until ``stop`` is set and every POST
    is answered, then cancel ``done`` (the root nursery: the signal watcher has nothing
    left to guard). Reports its URLs."""
    async with trio.open_nursery() as inner:
        inner.start_soon(_cancel_when_drained, app, stop, inner.cancel_scope)
        # hypercorn returns once in-flight requests finished (or the grace ran out).
        await serve_listener(app, listener, stop, table, task_status=task_status)
        inner.cancel_scope.cancel()
    done.cancel()


async def serve_workers(
    pool: WorkerPool,
    listener: Listener,
    done: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the ingest worker processes on the ingest listener until every one exited
    after :meth:`WorkerPool.begin_shutdown`, then cancel ``done`` (the root nursery).
    Reports the listener's URLs once every worker serves."""
    async with trio.open_nursery() as inner:
        await inner.start(pool.serve)
        task_status.started(listener.binds)
    done.cancel()


async def _cancel_when_drained(app: IngestApp, stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    await app.wait_idle()
    # Every POST has been answered. hypercorn 0.18 would otherwise wait out
    # graceful_timeout for a keep-alive connection parked in h11's PAUSED state
    # (a request pipelined behind the last answer); that request got, or would
    # get, 503 anyway, so closing it now loses nothing.
    scope.cancel()
