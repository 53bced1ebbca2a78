"""The service: config in, one root nursery, hypercorn in-process, signals.

Start-up order: listeners bound (ingest, then admin) → journal open (migrated)
→ sources' and admin tokens loaded → "ready". Stop (SIGTERM/SIGINT): refuse new POSTs with 503, stop
accepting, let in-flight requests finish within ``graceful_timeout``, commit
what is queued, exit 0. A second signal exits at once: everything
acknowledged is already committed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import repr_socket_addr

from streamd.admin import AdminApp, journal_routes
from streamd.admin.operations import operation_routes
from streamd.auth import TokenSet, ensure_token_file, loose_permissions, read_token_file
from streamd.auth.adobe import KeyStore, SignatureCheck, load_public_key
from streamd.auth.external import Introspector, JwtVerifier
from streamd.auth.ims import ClientCredentials
from streamd.auth.issuer import Issuer, load_or_create_key
from streamd.clock import utc_now
from streamd.drain import Drain, SinkSpec, YieldSettings, open_drain
from streamd.drain.retention import Retention, RetentionSettings, serve_retention
from streamd.errors import ConfigError
from streamd.ingest import IngestApp, Limits, Source
from streamd.ingest.pull import Pulls, PullSettings, PullSource
from streamd.ingest.validation import Validator
from streamd.journal import Journal, WriterOptions, open_journal
from streamd.ops.discovery import DaemonInfo, remove_daemon_file, write_daemon_file
from streamd.service.config import Config, SourceConfig, parse_listen, warn_about_type_filters
from streamd.service.health import StreamHealth
from streamd.service.http import (
    ADMIN_MAX_CONNECTIONS,
    ConnectionTable,
    bind_sockets,
    close_sockets,
    max_connections_for,
    serve_http,
)
from streamd.service.logs import PER_REQUEST
from streamd.service.metrics import Metrics, Parts
from streamd.service.sdnotify import Notifier
from streamd.service.sinks import build_specs
from streamd.service.workers import WorkerPool

log = logging.getLogger("streamd.service")
_MiB = 1024 * 1024


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


@dataclass(frozen=True, slots=True)
class Checked:
    """What :func:`check_startup` built, for ``serve`` to keep."""

    specs: list[SinkSpec]
    pull_plans: list[PullPlan]


def check_startup(config: Config) -> Checked:
    """Everything ``serve`` reads and builds before it binds a socket, without creating
    anything: the sinks' and pulls' secrets, the TLS certificates, keys and CAs, each
    source's token files and checkers (signature keys, an identity provider's secret,
    the validation CA), the embedded issuer's signing key and the admin token when they
    exist, that each listen address is local, and that the data directory is writable.
    ``streamd check-config`` runs exactly this; ``serve`` runs it first.

    Raises :class:`ConfigError` naming the file or key and the problem.
    """
    specs = build_specs(config)
    pull_plans = build_pulls(config)
    hypercorn_config(config)  # the TLS certificate and key
    if config.server.mtls_listen:
        mtls_hypercorn_config(config)  # ... and the client CA
    load_sources(config, create=False)
    if config.oauth.clients and os.path.exists(config.oauth_key_file):
        load_or_create_key(config.oauth_key_file)
    if config.admin.addresses and os.path.exists(config.admin_token_file):
        read_token_file(config.admin_token_file)
    addresses = [*config.server.listen, *config.server.mtls_listen, *config.admin.addresses]
    for address in addresses:
        _check_local(address)
    _check_writable(config.data_dir)
    warn_about_type_filters(config)
    return Checked(specs, pull_plans)


def _check_local(address: str) -> None:
    """Binding the address's host on port 0 finds what ``listen`` would (a host that is
    not this machine's, a name that does not resolve) without taking the port, which a
    running daemon may hold."""
    host, _ = parse_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from None


def _check_writable(data_dir: str) -> None:
    path = os.path.abspath(data_dir)
    while not os.path.lexists(path):  # serve creates it: its nearest existing parent
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"data_dir {data_dir}: {path} is not a writable directory")


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


def load_sources(
    config: Config, *, announce: Callable[[str], None] | None = None, create: bool = True
) -> list[Source]:
    """Build each source's token set and checkers, generating the default token on
    first start (not with ``create=False``: a missing token file streamd would create is
    then skipped, as ``check-config`` does).

    Raises :class:`ConfigError` naming the file and the problem.
    """
    cache: dict[str, list[str]] = {}
    sources = []
    for source in config.sources:
        if source.auth == "oauth":
            sources.append(
                Source(
                    source.name,
                    source.path,
                    None,
                    source.query_token,
                    require_client_cert=source.require_client_cert,
                    validator=_validator(source),
                    oauth=True,
                    external=_external(source),
                    max_in_flight=source.max_in_flight,
                )
            )
            continue
        if source.auth == "adobe-signature":
            check = signature_check(config, source)
            sources.append(
                Source(
                    source.name,
                    source.path,
                    None,
                    False,
                    check,
                    require_client_cert=source.require_client_cert,
                    validator=_validator(source),
                    max_in_flight=source.max_in_flight,
                )
            )
            continue
        tokens: list[str] = []
        for path in config.token_files(source):
            if path not in cache:
                creatable = path == config.default_token_file or path in config.tokens.files
                if creatable and not create and not os.path.exists(path):
                    cache[path] = []
                    continue
                if creatable:
                    generated = ensure_token_file(path)
                    if generated is not None and announce is not None:
                        if os.environ.get("INVOCATION_ID"):
                            # Under systemd stdout is the journal: a secret never goes there.
                            announce(f"streamd: generated an API token; read it in {path}")
                        else:
                            announce(
                                f"streamd: generated an API token (kept in {path}): {generated}"
                            )
                if loose_permissions(path):
                    log.warning("token file %s is readable by group or others; chmod 600 it", path)
                cache[path] = read_token_file(path)
            tokens.extend(cache[path])
        sources.append(
            Source(
                source.name,
                source.path,
                # check-config: a token file serve would create holds no token yet
                TokenSet(tokens) if tokens or create else None,
                source.query_token,
                require_client_cert=source.require_client_cert,
                validator=_validator(source),
                max_in_flight=source.max_in_flight,
            )
        )
    return sources


def ingest_limits(config: Config, processes: int = 1) -> Limits:
    """The ingest app's bounds from ``[server]``; with ``processes`` worker processes
    each gets its part (rounded up) of the daemon-wide ones."""
    server = config.server

    def part(n: int) -> int:
        return math.ceil(n / max(processes, 1))

    return Limits(
        max_body_bytes=server.max_body_bytes,
        max_in_flight=part(server.max_in_flight),
        max_events=server.max_events_per_request,
        max_buffered_bytes=part(server.max_buffered_mib * _MiB),
        body_timeout=server.body_timeout,
        min_body_rate=server.min_body_rate,
        body_grace=server.body_grace,
    )


def _validator(source: SourceConfig) -> Validator | None:
    if not source.auto_validate:
        return None
    hosts = tuple(h.lower() for h in source.validation_hosts)
    if source.validation_ca_file:
        try:  # loaded now: a missing or broken file is found at start, not at Adobe's call
            ssl.create_default_context(cafile=source.validation_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{source.validation_ca_file}: cannot load the validation CA of source "
                f"{source.name!r}: {exc}"
            ) from None
    return Validator(hosts, source.validation_ca_file)


def _external(source: SourceConfig) -> JwtVerifier | Introspector | None:
    o = source.oauth
    if o is None:
        return None
    if o.mode == "jwt":
        return JwtVerifier(o.jwks_url, o.issuer, o.audience, tuple(o.algorithms), o.leeway)
    secret = read_secret(o.client_secret_file, "introspection client secret").decode()
    return Introspector(o.introspection_url, o.client_id, secret, o.cache_seconds)


def build_issuer(config: Config) -> Issuer | None:
    """The embedded OAuth issuer, when [oauth] has clients (creates the signing key)."""
    if not config.oauth.clients:
        return None
    o = config.oauth
    key = load_or_create_key(config.oauth_key_file)
    return Issuer(dict(o.clients), key, ttl=o.token_ttl, max_failures=o.max_failures_per_minute)


PullPlan = tuple[object, PullSettings, ClientCredentials]


def build_pulls(config: Config) -> list[PullPlan]:
    """Settings and token client per ``[[pulls]]`` entry, its secret read now, with what
    decides whether a reload restarts it (its configuration and secret).

    Raises :class:`ConfigError` naming the file when a secret or CA file is unusable.
    """
    built: list[PullPlan] = []
    for pull in config.pulls:
        secret = read_secret(pull.client_secret_file, "pull client secret").decode()
        verify: ssl.SSLContext | bool = True
        if pull.ca_file:
            try:
                verify = ssl.create_default_context(cafile=pull.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{pull.ca_file}: cannot load the CA of pull {pull.name!r}: {exc}"
                ) from None
        settings = PullSettings(
            name=pull.name,
            url=pull.url,
            org_id=pull.org_id,
            api_key=pull.client_id,
            limit=pull.limit,
            start=pull.start,
            on_expired=pull.on_expired,
            timeout=pull.timeout,
            min_wait=pull.min_wait,
            max_wait=pull.max_wait,
            backoff_base=pull.backoff_base,
            backoff_cap=pull.backoff_cap,
            verify=verify,
        )
        tokens = ClientCredentials(
            pull.ims_url, pull.client_id, secret, pull.scope, timeout=pull.timeout, verify=verify
        )
        built.append(((pull, secret), settings, tokens))
    return built


def start_pulls(pulls: Pulls, plans: list[PullPlan], journal: Journal) -> list[str]:
    """Make the running pull sources match ``plans``; what changed."""
    return pulls.apply(
        [(identity, PullSource(settings, journal, tokens)) for identity, settings, tokens in plans]
    )


def read_secret(path: str, what: str) -> bytes:
    """A secret from a file; a relative path is looked up in ``$CREDENTIALS_DIRECTORY``
    (systemd's ``LoadCredential=``). Raises :class:`ConfigError` naming the file."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    full = os.path.join(creds, path) if creds and not os.path.isabs(path) else path
    try:
        with open(full, "rb") as f:
            data = f.read(64 * 1024 + 1)
    except OSError as exc:
        raise ConfigError(f"{full}: cannot read the {what}: {exc.strerror}") from None
    if len(data) > 64 * 1024:
        raise ConfigError(f"{full}: the {what} is larger than 64 KiB")
    secret = data.strip()
    if not secret:
        raise ConfigError(f"{full}: the {what} is empty")
    return secret


def signature_check(config: Config, source: SourceConfig) -> SignatureCheck:
    """The Adobe signature check of a source: pinned keys and secret read now.

    Raises :class:`ConfigError` naming the file and the problem.
    """
    adobe = source.adobe
    assert adobe is not None  # validated with the config
    pinned = {}
    for path, file in adobe.pinned_keys.items():
        try:
            pinned[path] = load_public_key(read_secret(file, "pinned Adobe key"), file)
        except ValueError as exc:
            raise ConfigError(f"sources {source.name!r}: adobe.pinned_keys: {exc}") from None
    secret = None
    if adobe.client_secret_file:
        secret = read_secret(adobe.client_secret_file, "Adobe client secret")
    keys = KeyStore(
        key_host=adobe.key_host,
        cache_dir=os.path.join(config.data_dir, "adobe-keys"),
        max_age=adobe.key_cache_hours * 3600,
        fetch=adobe.fetch_keys,
        timeout=adobe.fetch_timeout,
        pinned=pinned,
    )
    return SignatureCheck(keys, adobe.client_id, secret)


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
    specs, pull_plans = checked.specs, checked.pull_plans
    try:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data_dir {config.data_dir}: cannot create it: {exc.strerror}") from None
    hconfig = hypercorn_config(config)
    activated = activated_binds()
    if activated is not None:
        log.info("socket activation: serving the %d socket(s) systemd passed", len(activated))
        hconfig.bind = activated
    notify.status("opening the journal")
    with contextlib.ExitStack() as bound:
        # Bound (and listening) here, outside any nursery, so "address in use" is one
        # clear error; on any failure the sockets already bound are closed again.
        sockets = _bind(bound, hconfig, ", ".join(hconfig.bind))
        aconfig = admin_hypercorn_config(config)
        admin_sockets: Sockets | None = None
        if config.admin.addresses:
            admin_sockets = _bind(
                bound, aconfig, f"{', '.join(config.admin.addresses)} (admin.listen)"
            )
        mconfig: HypercornConfig | None = None
        mtls_sockets: Sockets | None = None
        if config.server.mtls_listen:
            mconfig = mtls_hypercorn_config(config)
            where = f"{', '.join(config.server.mtls_listen)} (server.mtls_listen)"
            mtls_sockets = _bind(bound, mconfig, where)
        bound.pop_all()  # from here on they are served, and closed with the process
    async with open_journal(
        config.journal_path, writer_options(config), commit_budget=config.journal.commit_budget
    ) as journal:
        # After the journal opened: a first start with a broken journal creates no token.
        sources = load_sources(config, announce=announce)
        admin = load_admin(config, announce=announce) if admin_sockets is not None else None
        app = IngestApp(sources, journal, ingest_limits(config))
        app.issuer = build_issuer(config)
        # server.workers: worker processes serve the ingest listeners; this process
        # keeps the journal writer, the drain and the admin listener.
        pool = None
        if config.server.workers:
            pool = WorkerPool(config, journal, sockets, mtls_sockets, backlog=hconfig.backlog)
        front: IngestApp | WorkerPool = app if pool is None else pool
        # One cap for the ingest listeners (with mTLS), a small one for the admin's.
        edge = ConnectionTable(max_connections_for(config.server.max_connections))
        admin_edge = ConnectionTable(ADMIN_MAX_CONNECTIONS)
        stop = trio.Event()
        # Stops after the listeners (its exit waits up to graceful_timeout for the
        # batches in flight; cursors only pass what was confirmed).
        yields = YieldSettings(config.drain.yield_pause, config.drain.yield_busy_ratio)
        async with open_drain(
            journal, specs, grace=config.server.graceful_timeout, yield_settings=yields
        ) as drain:
            async with trio.open_nursery() as nursery:
                reloader = _Reloader(config, reload, app, notify, [hconfig, mconfig])
                reloader.log_level_from_config = log_level_from_config
                reloader.drain = drain
                reloader.pool = pool
                nursery.start_soon(_watch_signals, front, stop, notify, reloader)
                r = config.retention
                retention = Retention(
                    journal,
                    [spec.name for spec in specs],
                    RetentionSettings(r.max_age, r.max_bytes, r.policy, r.interval),
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
                    binds = await nursery.start(_serve_workers, pool, sockets, nursery.cancel_scope)
                    if mtls_sockets is not None:
                        mtls_binds = _binds(mtls_sockets)
                else:
                    binds = await nursery.start(
                        _serve_http, app, hconfig, sockets, stop, edge, nursery.cancel_scope
                    )
                    if mconfig is not None and mtls_sockets is not None:
                        mtls_binds = await nursery.start(
                            _serve_listener, app, mconfig, mtls_sockets, stop, edge
                        )
                app.mtls_ports = {int(b.rsplit(":", 1)[1]) for b in mtls_binds}
                for bind in mtls_binds:
                    announce(f"streamd ready (client certificates required): {bind}")
                admin_binds: list[str] = []
                if admin is not None and admin_sockets is not None:
                    admin_binds = await nursery.start(
                        _serve_listener, admin, aconfig, admin_sockets, stop, admin_edge
                    )
                nursery.start_soon(_report_to_systemd, notify, front, journal, drain, binds, stop)
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


async def _serve_http(
    app: IngestApp,
    hconfig: HypercornConfig,
    sockets: Sockets,
    stop: trio.Event,
    table: ConnectionTable,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio.open_nursery() as inner:
        inner.start_soon(_cancel_when_drained, app, stop, inner.cancel_scope)
        # hypercorn returns once in-flight requests finished (or the grace ran out).
        await _serve_listener(app, hconfig, sockets, stop, table, task_status=task_status)
        inner.cancel_scope.cancel()
    scope.cancel()  # the signal watcher has nothing left to guard


async def _serve_workers(
    pool: WorkerPool,
    sockets: Sockets,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio.open_nursery() as inner:
        await inner.start(pool.serve)
        task_status.started(_binds(sockets))
    # pool.serve returned: every worker exited after begin_shutdown.
    scope.cancel()  # the signal watcher has nothing left to guard


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


def _binds(sockets: Sockets) -> list[str]:
    """The URLs of bound sockets, as hypercorn announces them."""
    return [
        f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}"
        for scheme, group in (("https", sockets.secure_sockets), ("http", sockets.insecure_sockets))
        for sock in group
    ]


async def _serve_listener(
    app: AdminApp | IngestApp,
    hconfig: HypercornConfig,
    sockets: Sockets,
    stop: trio.Event,
    table: ConnectionTable,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # Any listener (ingest, admin, mTLS) until ``stop``; the admin and mTLS ones stop
    # with ingest: the same trigger, and the nursery is cancelled once ingest drained.
    await serve_http(app, hconfig, sockets, table, shutdown=stop.wait, task_status=task_status)


def _bind(stack: contextlib.ExitStack, hconfig: HypercornConfig, where: str) -> Sockets:
    sockets = bind_sockets(hconfig, where)
    stack.callback(close_sockets, sockets)
    return sockets


async def _cancel_when_drained(app: IngestApp, stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    await app.wait_idle()
    # Every POST has been answered. hypercorn 0.18 would otherwise wait out
    # graceful_timeout for a keep-alive connection parked in h11's PAUSED state
    # (a request pipelined behind the last answer); that request got, or would
    # get, 503 anyway, so closing it now loses nothing.
    scope.cancel()


async def _report_to_systemd(
    notify: Notifier,
    app: IngestApp | WorkerPool,
    journal: Journal,
    drain: Drain,
    binds: list[str],
    stop: trio.Event,
) -> None:
    """READY once listening; then STATUS lines and watchdog pings until stop.

    A ping goes out only while the journal writer makes progress (a *successful*
    commit within the interval, or idle with nothing queued: a failed commit is
    no progress) and the drain saves what its sinks confirmed: a wedged writer,
    commits that keep failing under load, or a stuck drain stop the pings and
    systemd restarts the process (WatchdogSec), rather than senders or sinks
    hanging on it.
    """
    if not notify.enabled:
        return
    stats = journal.statistics()
    notify.ready(f"listening on {', '.join(binds)}; {stats.events} events journaled")
    usec = notify.watchdog_usec
    tick = min(usec / 2_000_000, 5.0) if usec else 5.0
    stale_after = max(usec / 1_000_000 if usec else 0.0, 2.5)  # the writer idles 1 s at most
    last_events, last_time, next_status, wedged = stats.events, trio.current_time(), 0.0, False
    while not stop.is_set():
        now = trio.current_time()
        if usec:
            writer_ok = journal.making_progress(stale_after)
            if writer_ok and drain.making_progress(stale_after):
                notify.watchdog()
                wedged = False
            elif not wedged:
                wedged = True
                failure = journal.commit_failure()
                log.error(
                    "%s has made no progress for %.1f s%s; withholding watchdog pings",
                    "journal writer" if not writer_ok else "the drain's save loop",
                    stale_after,
                    f" (commits failing: {failure[1]})" if failure and not writer_ok else "",
                )
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


class _Reloader:
    """SIGHUP: re-read and fully validate the configuration, then swap in what can
    change live (sources and their tokens). An invalid configuration changes
    nothing: the old one stays and the log says why."""

    # Settings a running process cannot take over; they need a restart.
    _RESTART_ONLY = ("data_dir", "journal", "retention", "health", "admin", "drain")

    def __init__(
        self,
        config: Config,
        load: Callable[[], Config] | None,
        app: IngestApp,
        notify: Notifier,
        listeners: list[HypercornConfig | None],
    ) -> None:
        self.config = config
        self._load = load
        self._app = app
        self._notify = notify
        self._listeners = [hc for hc in listeners if hc is not None]
        self.log_level_from_config = False
        self.drain: Drain | None = None
        self.retention: Retention | None = None
        self.pulls: Pulls | None = None
        self.journal: Journal | None = None
        self.pool: WorkerPool | None = None

    async def __call__(self) -> None:
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
            for name in self._RESTART_ONLY:
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
            self._app.replace_sources(sources)
            self._app.issuer = issuer
            if self.drain is not None and new.sinks != self.config.sinks:
                old = {s.name: s for s in self.config.sinks}
                changed = {s.name for s in new.sinks if s.name in old and old[s.name] != s}
                for line in await self.drain.reconfigure(specs, changed):
                    log.info("SIGHUP: %s", line)
                if self.retention is not None:
                    self.retention.sinks = tuple(spec.name for spec in specs)
            if self.pulls is not None and self.journal is not None:
                for line in start_pulls(self.pulls, pull_plans, self.journal):
                    log.info("SIGHUP: %s", line)
            if self.log_level_from_config:
                logging.getLogger().setLevel((new.log_level or "info").upper())
            if self.pool is not None:
                self.pool.reload(new)  # the workers serve the sources, with our log level
            self.config = new
            log.info(
                "SIGHUP: configuration reloaded; sources: %s",
                ", ".join(f"{s.name} at {s.path}" for s in sources),
            )
        self._notify.ready("configuration reloaded; serving")


async def _warn_about_streams(health: StreamHealth, interval: float) -> None:
    """Log when a stream goes silent or its failure share nears Adobe's limit."""
    while True:
        await trio.sleep(interval)
        for warning in health.check():
            log.warning("%s", warning)


async def _watch_signals(
    front: IngestApp | WorkerPool, stop: trio.Event, notify: Notifier, reload: _Reloader
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
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
