"""Start-up: everything the daemon reads (configuration, secrets, certificates, token
files) turned into the objects it runs with, before a socket is bound.

:func:`check_startup` is what ``streamd check-config`` runs and what ``serve`` runs
first, so the two cannot disagree; the ``build_*``/``load_*`` functions are also what a
SIGHUP reload (:mod:`streamd.service.reload`) and each ingest worker process
(:mod:`streamd.service.worker`) read the configuration with. Every problem is a
:class:`ConfigError` naming the file or key.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from streamd.auth import TokenSet, ensure_token_file, loose_permissions, read_token_file
from streamd.auth.adobe import KeyStore, SignatureCheck, load_public_key
from streamd.auth.client_cert import ClientCertCheck
from streamd.auth.external import Introspector, JwtVerifier
from streamd.auth.ims import ClientCredentials
from streamd.auth.issuer import Issuer, load_or_create_key
from streamd.drain import SinkSpec, YieldSettings
from streamd.drain.retention import RetentionSettings
from streamd.errors import ConfigError
from streamd.ingest import Limits, Source
from streamd.ingest.lease import LeaseSettings, PgLease
from streamd.ingest.pull import Pulls, PullSettings, PullSource
from streamd.ingest.validation import Validator
from streamd.journal import Journal, WriterOptions
from streamd.service.config import Config, SourceConfig, parse_listen, warn_about_type_filters
from streamd.service.listeners import hypercorn_config, mtls_hypercorn_config
from streamd.service.sinks import build_specs

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
        if source.auth != "token":
            sources.append(_tokenless_source(config, source))
            continue
        tokens: list[str] = []
        for path in config.token_files(source):
            if path not in cache:
                cache[path] = _read_tokens(config, path, announce=announce, create=create)
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


def _tokenless_source(config: Config, source: SourceConfig) -> Source:
    """A source whose credential is not an API token: OAuth, Adobe signatures or the
    client certificate (which implies the mTLS listener)."""
    if source.auth == "oauth":
        return Source(
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
    if source.auth == "client-cert":
        return Source(
            source.name,
            source.path,
            None,
            False,
            require_client_cert=True,
            validator=_validator(source),
            client_cert=client_cert_check(source),
            max_in_flight=source.max_in_flight,
        )
    return Source(
        source.name,
        source.path,
        None,
        False,
        signature_check(config, source),
        require_client_cert=source.require_client_cert,
        validator=_validator(source),
        max_in_flight=source.max_in_flight,
    )


def client_cert_check(source: SourceConfig) -> ClientCertCheck:
    """The pins of an ``auth = "client-cert"`` source (none: any certificate the mTLS
    listener's CA signed). Raises :class:`ConfigError` naming the source on a malformed
    pin (the configuration checks found it first)."""
    pins = source.client_cert
    if pins is None:
        return ClientCertCheck()
    try:
        return ClientCertCheck.from_config(
            pins.subjects, pins.common_names, pins.sha256_fingerprints
        )
    except ValueError as exc:
        raise ConfigError(f"source {source.name}: client_cert: {exc}") from None


def _read_tokens(
    config: Config, path: str, *, announce: Callable[[str], None] | None, create: bool
) -> list[str]:
    """The tokens of a token file, generated first when it is streamd's to create and
    missing (with ``create=False`` it is then skipped: no tokens)."""
    creatable = path == config.default_token_file or path in config.tokens.files
    if creatable and not create and not os.path.exists(path):
        return []
    if creatable:
        generated = ensure_token_file(path)
        if generated is not None and announce is not None:
            if os.environ.get("INVOCATION_ID"):
                # Under systemd stdout is the journal: a secret never goes there.
                announce(f"streamd: generated an API token; read it in {path}")
            else:
                announce(f"streamd: generated an API token (kept in {path}): {generated}")
    if loose_permissions(path):
        log.warning("token file %s is readable by group or others; chmod 600 it", path)
    return read_token_file(path)


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
