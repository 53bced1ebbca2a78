"""Start-up: everything the daemon reads (configuration, secrets, certificates, token
files) turned into the objects it runs with, before a socket is bound.

:func:`check_startup` is what ``streamd check-config`` runs and what ``serve`` runs
first, so the two cannot disagree; the ``build_*`` functions are also what a SIGHUP
reload (:mod:`streamd.service.reload`) reads the configuration with. The sources, the
ingest bounds and the issuer are built in :mod:`streamd.service.sources`, which each
ingest worker process imports without this module's journal and drain side. Every
problem is a :class:`ConfigError` naming the file or key.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from streamd.auth import TokenSet, ensure_token_file, loose_permissions, read_token_file
from streamd.auth.ims import ClientCredentials
from streamd.auth.issuer import load_or_create_key
from streamd.drain import SinkSpec, YieldSettings
from streamd.drain.retention import RetentionSettings
from streamd.errors import ConfigError
from streamd.ingest.lease import LeaseSettings, PgLease
from streamd.ingest.pull import Pulls, PullSettings, PullSource
from streamd.journal import Journal, WriterOptions
from streamd.service.config import Config, parse_listen, warn_about_type_filters
from streamd.service.listeners import hypercorn_config, mtls_hypercorn_config
from streamd.service.sinks import build_specs
from streamd.service.sources import load_sources, read_secret

log = logging.getLogger("streamd.service")
_MiB = 1024 * 1024


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


def create_data_dir(config: Config) -> None:
    """Create ``data_dir`` (readable by its owner only) when it does not exist.

    Raises :class:`ConfigError` with the system's reason when it cannot.
    """
    try:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data_dir {config.data_dir}: cannot create it: {exc.strerror}") from None


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


PullPlan = tuple[object, PullSettings, ClientCredentials, LeaseSettings | None]


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
        lease = None
        if pull.lease is not None:
            password = None
            if pull.lease.password_file:
                password = read_secret(pull.lease.password_file, "lease password").decode()
                password = password.strip().splitlines()[0] if password.strip() else None
            lease = LeaseSettings(
                dsn=pull.lease.dsn,
                name=pull.name,
                holder=config.instance_name,
                password=password,
                table=pull.lease.table,
                ttl=pull.lease.ttl,
                connect_timeout=pull.lease.connect_timeout,
            )
        built.append(((pull, secret, lease), settings, tokens, lease))
    return built


def open_lease(settings: LeaseSettings | None) -> PgLease | None:
    return None if settings is None else PgLease(settings)


def start_pulls(pulls: Pulls, plans: list[PullPlan], journal: Journal) -> list[str]:
    """Make the running pull sources match ``plans``; what changed."""
    return pulls.apply(
        [
            (identity, PullSource(settings, journal, tokens, lease=open_lease(lease)))
            for identity, settings, tokens, lease in plans
        ]
    )


def load_admin_tokens(config: Config, *, announce: Callable[[str], None] | None = None) -> TokenSet:
    """The admin listener's tokens (the token file generated on first start).

    Raises :class:`ConfigError` naming the file when it cannot be read.
    """
    path = config.admin_token_file
    generated = ensure_token_file(path)
    if generated is not None and announce is not None:
        announce(f"streamd: generated an admin token (kept in {path}): {generated}")
    if loose_permissions(path):
        log.warning("token file %s is readable by group or others; chmod 600 it", path)
    return TokenSet(read_token_file(path))


def drain_yields(config: Config) -> YieldSettings:
    """When the sinks yield to a saturated ingest, from the [drain] section."""
    return YieldSettings(config.drain.yield_pause, config.drain.yield_busy_ratio)


def retention_settings(config: Config) -> RetentionSettings:
    """What retention deletes and how often, from the [retention] section."""
    r = config.retention
    return RetentionSettings(r.max_age, r.max_bytes, r.policy, r.interval)
