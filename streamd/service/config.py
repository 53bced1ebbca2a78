"""Configuration: one TOML file decoded into frozen msgspec Structs.

Every field here is documented in docs/configuration.md (a row of its table); a
test fails when one is not. Errors name the file, the key and the problem.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Annotated, Literal

import msgspec

from streamd.errors import ConfigError
from streamd.journal.paths import default_data_dir

_MiB = 1024 * 1024
Positive = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[server]: the HTTP listener."""

    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * _MiB)] = 8 * _MiB
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    max_events_per_request: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000
    # The bodies being read at once may hold at most this much memory (503 past it).
    max_buffered_mib: Annotated[int, msgspec.Meta(ge=1, le=65_536)] = 256
    # 0: derived from RLIMIT_NOFILE (see max_connections_for).
    max_connections: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    graceful_timeout: Seconds = 10.0
    keep_alive_timeout: Seconds = 30.0
    read_timeout: Seconds = 30.0
    body_timeout: Annotated[float, msgspec.Meta(ge=1, le=600)] = 30.0
    min_body_rate: Annotated[int, msgspec.Meta(ge=0, le=1024 * _MiB)] = 4096
    body_grace: Annotated[float, msgspec.Meta(ge=0, le=600)] = 5.0
    tls_certfile: str = ""
    tls_keyfile: str = ""
    mtls_listen: list[str] = msgspec.field(default_factory=list)
    mtls_client_ca: str = ""
    workers: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0


class JournalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[journal]: durability and bounds of the write-ahead journal."""

    synchronous: Literal["full", "normal"] = "full"
    commit_budget: Seconds = 5.0
    max_events_per_commit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20_000
    max_queued_events: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 200_000
    min_free_disk_mib: Annotated[int, msgspec.Meta(ge=0)] = 256
    cache_mib: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 24
    wal_max_mib: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 64
    checkpoint_interval: Seconds = 1.0


class TokensConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[tokens]: where API tokens are read from (one token per line)."""

    files: list[str] = msgspec.field(default_factory=list)


class AdobeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sources.adobe]: Adobe I/O Events signature checks of one source."""

    client_id: str
    key_host: str = "https://static.adobeioevents.com"
    fetch_keys: bool = True
    pinned_keys: dict[str, str] = msgspec.field(default_factory=dict)
    key_cache_hours: Annotated[float, msgspec.Meta(gt=0, le=24)] = 24.0
    fetch_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    client_secret_file: str = ""


class ExternalOAuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sources.oauth]: tokens from an external identity provider."""

    mode: Literal["jwt", "introspection"]
    jwks_url: str = ""
    issuer: str = ""
    audience: str = ""
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256"])
    leeway: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    introspection_url: str = ""
    client_id: str = ""
    client_secret_file: str = ""
    cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 300.0


_Pins = Annotated[list[Annotated[str, msgspec.Meta(max_length=1024)]], msgspec.Meta(max_length=64)]


class ClientCertConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sources.client_cert]: the certificates an auth = "client-cert" source accepts."""

    subjects: _Pins = msgspec.field(default_factory=list)
    common_names: _Pins = msgspec.field(default_factory=list)
    sha256_fingerprints: _Pins = msgspec.field(default_factory=list)


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[[sources]]: one named endpoint (a legacy push subscription or an I/O registration)."""

    name: str
    path: str
    auth: Literal["token", "adobe-signature", "oauth", "client-cert"] = "token"
    token_files: list[str] = msgspec.field(default_factory=list)
    query_token: bool = True
    require_client_cert: bool = False
    oauth: ExternalOAuthConfig | None = None
    auto_validate: bool = False
    validation_hosts: list[str] = msgspec.field(default_factory=lambda: ["csm.adobe.io"])
    validation_ca_file: str = ""
    adobe: AdobeConfig | None = None
    client_cert: ClientCertConfig | None = None
    # This source's share of server.max_in_flight (0: an equal part of what is left).
    max_in_flight: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0


Streams = Literal["activity", "audit", "notification", "other"]
_Text = Annotated[str, msgspec.Meta(max_length=1024)]
_Short = Annotated[str, msgspec.Meta(max_length=256)]


class FilterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[[sinks.filters]]: events matching every field set here (a list: any item)."""

    streams: Annotated[list[Streams], msgspec.Meta(max_length=4)] = msgspec.field(
        default_factory=list
    )
    types: Annotated[list[_Short], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=list
    )
    munchkin_ids: Annotated[list[_Short], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=list
    )
    activity_type_ids: Annotated[
        list[Annotated[int, msgspec.Meta(ge=0, le=2**31)]], msgspec.Meta(max_length=1024)
    ] = msgspec.field(default_factory=list)
    sources: Annotated[list[_Short], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=list
    )


class PoolConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.pool]: how hard to push; unset keys come from the preset."""

    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    linger: Annotated[float, msgspec.Meta(ge=0, le=60)] | None = None
    interval: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    timeout: Annotated[float, msgspec.Meta(ge=0.1, le=600)] | None = None


class RetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.retry]: backoff, dead letters, pause; unset keys come from the preset."""

    max_attempts: Annotated[int, msgspec.Meta(ge=0, le=1000)] | None = None
    backoff_base: Annotated[float, msgspec.Meta(ge=0.001, le=3600)] | None = None
    backoff_cap: Annotated[float, msgspec.Meta(ge=0.001, le=86_400)] | None = None
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    pause_after: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    probe_interval: Annotated[float, msgspec.Meta(ge=0.1, le=86_400)] | None = None


class HttpSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.http]: where and how to POST."""

    url: _Text
    headers: dict[_Short, _Text] = msgspec.field(default_factory=dict)
    bearer_token_file: _Text = ""
    secret_files: Annotated[list[_Text], msgspec.Meta(max_length=8)] = msgspec.field(
        default_factory=list
    )
    # The body: streamd's envelope, Marketo's legacy push, or Adobe I/O Events' shape.
    format: Literal["streamd", "legacy-push", "cloudevents", "cloudevents-single"] = "streamd"
    recipient_client_id: _Short = ""
    # Sign each body as Adobe does (cloudevents formats): the RSA key and its key path.
    adobe_signing_key_file: _Text = ""
    adobe_key_path: _Text = ""


class FileSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.file]: JSON Lines files."""

    directory: _Text
    prefix: _Short = ""
    max_bytes: Annotated[int, msgspec.Meta(ge=4096, le=2**40)] = 64 * _MiB
    max_age: Annotated[float, msgspec.Meta(ge=1, le=31 * 86_400)] = 3600.0
    gzip: bool = False
    fsync: bool = True


class SqliteSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.sqlite]: the database that gets one table per stream."""

    path: _Text
    table_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]{0,32}$")] = ""
    indexes: list[
        Literal[
            "seq", "type", "source", "munchkin_id", "activity_type_id", "lead_id",
            "occurred_at", "received_at",
        ]
    ] = msgspec.field(default_factory=lambda: ["occurred_at"])  # fmt: skip


class PostgresSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.postgres]: the table every receiver's events land in, once per event key."""

    dsn: _Text
    password_file: _Text = ""
    table: Annotated[
        str, msgspec.Meta(pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")
    ] = "streamd_events"
    manage_table: bool = True
    connect_timeout: Annotated[float, msgspec.Meta(ge=1, le=300)] = 10.0


class KafkaSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.kafka]: the topics events are produced to (idempotent, acks=all)."""

    bootstrap_servers: Annotated[list[_Short], msgspec.Meta(min_length=1, max_length=64)]
    topic: _Short = "streamd.{stream}"
    key: Literal["event", "lead"] = "event"
    properties: dict[_Short, _Text] = msgspec.field(default_factory=dict)
    password_file: _Text = ""


class NatsSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.nats]: the JetStream stream events are published to, deduplicated by key."""

    servers: Annotated[list[_Short], msgspec.Meta(min_length=1, max_length=64)]
    stream: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "STREAMD"
    subject: _Short = "streamd.{stream}.{type}"
    manage_stream: bool = True
    duplicate_window: Annotated[float, msgspec.Meta(ge=1, le=7 * 86_400)] = 120.0
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    token_file: _Text = ""
    credentials_file: _Text = ""


class ExecSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.exec]: the command run for each batch."""

    command: Annotated[list[_Text], msgspec.Meta(min_length=1, max_length=256)]
    env: dict[_Short, _Text] = msgspec.field(default_factory=dict)
    cwd: _Text = ""


class SinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[[sinks]]: one destination the journal drains to."""

    name: str
    kind: Literal["http", "file", "sqlite", "exec", "stdout", "postgres", "kafka", "nats"]
    preset: Literal["default", "marketo"] = "default"
    start: Literal["oldest", "latest"] = "oldest"
    filters: Annotated[list[FilterConfig], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    http: HttpSinkConfig | None = None
    file: FileSinkConfig | None = None
    sqlite: SqliteSinkConfig | None = None
    exec: ExecSinkConfig | None = None
    postgres: PostgresSinkConfig | None = None
    kafka: KafkaSinkConfig | None = None
    nats: NatsSinkConfig | None = None


class PullLeaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[pulls.lease]: several receivers, one puller at a time (a PostgreSQL row)."""

    dsn: _Text
    password_file: _Text = ""
    table: Annotated[
        str, msgspec.Meta(pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")
    ] = "streamd_pull_leases"
    ttl: Annotated[float, msgspec.Meta(ge=3, le=600)] = 15.0
    connect_timeout: Annotated[float, msgspec.Meta(ge=1, le=300)] = 10.0


class PullConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[[pulls]]: an Adobe I/O Events registration whose journal streamd pulls."""

    name: str
    url: _Text
    org_id: _Short
    client_id: _Short
    client_secret_file: _Text
    scope: _Text
    ims_url: _Text = "https://ims-na1.adobelogin.com/ims/token/v3"
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    start: _Short = "oldest"
    on_expired: Literal["oldest", "latest"] = "oldest"
    timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 30.0
    min_wait: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 1.0
    max_wait: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    backoff_base: Annotated[float, msgspec.Meta(ge=0.01, le=3600)] = 1.0
    backoff_cap: Annotated[float, msgspec.Meta(ge=0.1, le=86_400)] = 300.0
    ca_file: _Text = ""
    lease: PullLeaseConfig | None = None


class OAuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[oauth]: the embedded issuer (POST /oauth/token) for auth = "oauth" sources."""

    clients: dict[str, str] = msgspec.field(default_factory=dict)  # client id -> secret hash
    token_ttl: Annotated[int, msgspec.Meta(ge=60, le=86_400)] = 3600
    signing_key_file: str = ""
    max_failures_per_minute: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5


class HealthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[health]: when to warn that a stream is silent or failing."""

    silence_warning: Annotated[float, msgspec.Meta(ge=0, le=30 * 86_400)] = 3600.0
    failure_warning_ratio: Annotated[float, msgspec.Meta(ge=0.05, le=0.8)] = 0.5
    check_interval: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0


class DrainConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[drain]: how the sinks share the machine with ingest."""

    yield_pause: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.25
    yield_busy_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5


class RetentionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[retention]: how long the journal keeps events and how large it may grow."""

    max_age: Annotated[float, msgspec.Meta(ge=3600, le=3650 * 86_400)] = 7 * 86_400.0
    max_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**50)] = 0
    policy: Literal["refuse", "drop_confirmed"] = "refuse"
    interval: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 60.0


class AdminConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[admin]: the authenticated admin listener (the journal pull endpoint, and more later)."""

    enabled: bool = True
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8081"])
    token_file: str = ""
    pull_retry_after: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 5

    @property
    def addresses(self) -> list[str]:
        """Where to listen; empty when the listener is off."""
        return list(self.listen) if self.enabled else []


def _default_sources() -> list[SourceConfig]:
    return [SourceConfig(name="events", path="/events")]


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration file."""

    data_dir: str = ""
    # This receiver's name where several share a destination (postgres, kafka, nats).
    instance: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{0,128}$")] = ""
    log_level: Literal["", "debug", "info", "warning", "error"] = ""
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    tokens: TokensConfig = msgspec.field(default_factory=TokensConfig)
    sources: list[SourceConfig] = msgspec.field(default_factory=_default_sources)
    sinks: Annotated[list[SinkConfig], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    pulls: Annotated[list[PullConfig], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )
    drain: DrainConfig = msgspec.field(default_factory=DrainConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    oauth: OAuthConfig = msgspec.field(default_factory=OAuthConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)

    @property
    def journal_path(self) -> str:
        """The journal file inside the data directory."""
        return os.path.join(self.data_dir, "journal.db")

    @property
    def oauth_key_file(self) -> str:
        """The embedded issuer's token signing key (generated on first start)."""
        return self.oauth.signing_key_file or os.path.join(self.data_dir, "oauth-signing-key")

    @property
    def default_token_file(self) -> str:
        """Where the generated API token lives when no token file is configured."""
        return os.path.join(self.data_dir, "api-token")

    @property
    def instance_name(self) -> str:
        """``instance``, else the host name: recorded with what this receiver delivers."""
        return self.instance or socket.gethostname()

    @property
    def admin_token_file(self) -> str:
        """The admin listener's token file: ``admin.token_file`` or ``<data_dir>/admin-token``."""
        return self.admin.token_file or os.path.join(self.data_dir, "admin-token")

    def token_files(self, source: SourceConfig) -> list[str]:
        """The token files that authenticate ``source``."""
        return source.token_files or self.tokens.files or [self.default_token_file]


MAX_CONFIG_BYTES = 1024 * 1024


def load_config(
    path: str | None,
    *,
    listen: list[str] | None = None,
    data_dir: str | None = None,
    token_file: str | None = None,
    admin_listen: list[str] | None = None,
) -> Config:
    """Load and validate the configuration, then apply command-line overrides.

    ``path`` None means no file: every default. Raises :class:`ConfigError`
    naming the file, the key and the problem.
    """
    where = path or "<defaults>"
    config = Config() if path is None else decode_config(_read(path), path)
    changes: dict[str, object] = {}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    elif not config.data_dir:
        changes["data_dir"] = default_data_dir()
    if listen:
        changes["server"] = msgspec.structs.replace(config.server, listen=list(listen))
    if token_file is not None:
        changes["tokens"] = TokensConfig(files=[token_file])
    if admin_listen:
        changes["admin"] = msgspec.structs.replace(
            config.admin, enabled=True, listen=list(admin_listen)
        )
    if changes:
        config = msgspec.structs.replace(config, **changes)
    validate(config, where, overrides=bool(listen), admin_overrides=bool(admin_listen))
    return config


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: the configuration is larger than {MAX_CONFIG_BYTES} bytes")
    return data


# The keys that take addresses (HOST:PORT, or a host), by table: each takes one address
# as a string or several as a list, alike; decoded, they are always lists.
_ADDRESS_KEYS = {
    "server": ("listen", "mtls_listen"),
    "admin": ("listen",),
    "sources[]": ("validation_hosts",),
}
ADDRESS_KEYS = tuple(f"{table}.{key}" for table, keys in _ADDRESS_KEYS.items() for key in keys)


def decode_config(data: bytes, path: str) -> Config:
    """Decode TOML bytes into a :class:`Config`; raises :class:`ConfigError`."""
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    _addresses_as_lists(raw, path)
    try:
        return msgspec.convert(raw, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_explain(str(exc))}") from None


def _addresses_as_lists(raw: object, path: str) -> None:
    """Turn each address key written as one string into a list of it, in place.

    A listen address given as a string is checked here, where the error can name the key
    as written (``key admin.listen``, not ``admin.listen[0]``).
    """
    if not isinstance(raw, dict):
        return  # not a table at all: the typed conversion says so
    tables: list[tuple[str, str, object]] = [
        ("server", "server", raw.get("server")),
        ("admin", "admin", raw.get("admin")),
    ]
    sources = raw.get("sources")
    if isinstance(sources, list):
        tables += [("sources[]", f"sources[{i}]", table) for i, table in enumerate(sources)]
    for kind, where, table in tables:
        if not isinstance(table, dict):
            continue  # the typed conversion names what is wrong
        for name in _ADDRESS_KEYS[kind]:
            value = table.get(name)
            if not isinstance(value, str):
                continue
            if name.endswith("listen"):
                try:
                    parse_listen(value)
                except ValueError as exc:
                    raise ConfigError(f"{path}: key {where}.{name}: {exc}") from None
            table[name] = [value]


def _explain(message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.server.max_body_bytes`";
    # operators think in TOML keys: "key server.max_body_bytes: expected int, got str".
    match = re.fullmatch(r"(.*) - at `\$\.?(.*)`", message)
    problem, key = match.groups() if match else (message, "")
    key = re.sub(r"\[(\d+)\]", lambda m: f"[{m.group(1)}]", key)
    problem = problem[0].lower() + problem[1:] if problem else problem
    return f"key {key or '(top level)'}: {problem}"


from streamd.service.config_checks import (  # noqa: E402 - after the records they check
    parse_listen,
    type_filter_warnings,
    validate,
    validate_pulls,
    validate_sinks,
    warn_about_type_filters,
)

__all__ = [
    "ADDRESS_KEYS",
    "AdminConfig",
    "ClientCertConfig",
    "Config",
    "SinkConfig",
    "SourceConfig",
    "decode_config",
    "default_data_dir",
    "load_config",
    "parse_listen",
    "type_filter_warnings",
    "validate",
    "validate_pulls",
    "validate_sinks",
    "warn_about_type_filters",
]
