"""Configuration: one TOML file decoded into frozen msgspec Structs.

Every field here is documented in docs/configuration.md (a row of its table); a
test fails when one is not. Errors name the file, the key and the problem.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from typing import Annotated, Literal

import msgspec

from streamd.core.event_types import unmatched_type_glob
from streamd.errors import ConfigError
from streamd.journal.paths import default_data_dir

log = logging.getLogger("streamd.config")

_MiB = 1024 * 1024
Positive = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HTTP_URL = re.compile(r"https?://[^\s/]+(/\S*)?")  # sinks, identity providers, pulls
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]{0,255}")


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


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[[sources]]: one named endpoint (a legacy push subscription or an I/O registration)."""

    name: str
    path: str
    auth: Literal["token", "adobe-signature", "oauth"] = "token"
    token_files: list[str] = msgspec.field(default_factory=list)
    query_token: bool = True
    require_client_cert: bool = False
    oauth: ExternalOAuthConfig | None = None
    auto_validate: bool = False
    validation_hosts: list[str] = msgspec.field(default_factory=lambda: ["csm.adobe.io"])
    validation_ca_file: str = ""
    adobe: AdobeConfig | None = None
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


class ExecSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[sinks.exec]: the command run for each batch."""

    command: Annotated[list[_Text], msgspec.Meta(min_length=1, max_length=256)]
    env: dict[_Short, _Text] = msgspec.field(default_factory=dict)
    cwd: _Text = ""


class SinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """[[sinks]]: one destination the journal drains to."""

    name: str
    kind: Literal["http", "file", "sqlite", "exec", "stdout"]
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


def validate(
    config: Config, where: str, *, overrides: bool = False, admin_overrides: bool = False
) -> None:
    """Check what types alone cannot: addresses, names, paths, uniqueness."""
    if not config.server.listen:
        raise ConfigError(f"{where}: key server.listen: at least one address is needed")
    for index, address in enumerate(config.server.listen):
        try:
            parse_listen(address)
        except ValueError as exc:
            origin = "--listen" if overrides else f"key server.listen[{index}]"
            raise ConfigError(f"{where}: {origin}: {exc}") from None
    _validate_admin(config, where, admin_overrides)
    if not config.sources:
        raise ConfigError(f"{where}: key sources: at least one source is needed")
    names: set[str] = set()
    paths: set[str] = set()
    for index, source in enumerate(config.sources):
        key = f"sources[{index}]"
        _check_name(source.name, f"{where}: key {key}.name")
        if not _PATH.fullmatch(source.path) or "//" in source.path:
            raise ConfigError(
                f"{where}: key {key}.path: {source.path!r} is not a valid URL path "
                "(it must start with '/')"
            )
        if source.name in names:
            raise ConfigError(f"{where}: key {key}.name: duplicate source name {source.name!r}")
        route = source.path.rstrip("/") or "/"  # the app routes "/a/" and "/a" alike
        if route in paths:
            raise ConfigError(f"{where}: key {key}.path: duplicate source path {source.path!r}")
        names.add(source.name)
        paths.add(route)
        _validate_adobe(source, f"{where}: key {key}")
        _validate_external(source, f"{where}: key {key}")
        if source.auth == "oauth" and source.oauth is None and not config.oauth.clients:
            raise ConfigError(
                f'{where}: key {key}.auth: "oauth" needs [oauth] clients '
                "(client id = secret hash; streamd oauth hash-secret makes one)"
            )
        if source.require_client_cert and not config.server.mtls_listen:
            raise ConfigError(
                f"{where}: key {key}.require_client_cert: needs server.mtls_listen "
                "(the listener that asks for client certificates)"
            )
    _validate_tls(config.server, where)
    _validate_listeners(config, where, overrides, admin_overrides)
    _validate_bounds(config, where)
    from streamd.auth.issuer import validate_hash  # here: keeps config's imports small

    for client_id, stored in config.oauth.clients.items():
        if not _NAME.fullmatch(client_id):
            raise ConfigError(f"{where}: key oauth.clients: {client_id!r} is not a valid client id")
        validate_hash(stored, f"{where}: key oauth.clients.{client_id}")
    if any(s.path.rstrip("/") == "/oauth/token" for s in config.sources):
        raise ConfigError(f"{where}: key sources: /oauth/token is the embedded issuer's path")
    validate_sinks(config, where)
    validate_pulls(config, where)


def _validate_bounds(config: Config, where: str) -> None:
    """Bounds that depend on each other: shares of in-flight slots, events vs the queue."""
    server = config.server
    if server.max_events_per_request > config.journal.max_queued_events:
        raise ConfigError(
            f"{where}: key server.max_events_per_request: {server.max_events_per_request} is "
            f"larger than journal.max_queued_events ({config.journal.max_queued_events}); "
            "such a request could never be queued"
        )
    if server.body_grace >= server.body_timeout:
        raise ConfigError(
            f"{where}: key server.body_grace: {server.body_grace:g} s is not shorter than "
            f"server.body_timeout ({server.body_timeout:g} s)"
        )
    fixed = [s.max_in_flight for s in config.sources if s.max_in_flight]
    # The embedded issuer's POST /oauth/token takes a share like a source.
    open_shares = len(config.sources) - len(fixed) + (1 if config.oauth.clients else 0)
    left = server.max_in_flight - sum(fixed)
    if left < open_shares or (not open_shares and left < 0):
        raise ConfigError(
            f"{where}: key sources: the sources' max_in_flight add up to {sum(fixed)}, which "
            f"leaves {max(left, 0)} of server.max_in_flight ({server.max_in_flight}) for "
            f"{open_shares} other share(s); each needs at least 1"
        )


def _check_name(name: str, where: str) -> None:
    """A source, pull or sink name: it labels rows in the journal and in metrics."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: {name!r} is not a valid name (letters, digits, '_', '.', '-'; at most 64)"
        )


def validate_pulls(config: Config, where: str) -> None:
    """Names unique among sources and pulls, URLs, a usable start, sane waits."""
    from streamd.core.timeparse import WHEN_FORMS
    from streamd.ingest.pull import valid_start  # here: keeps config's imports small

    taken = {s.name for s in config.sources}
    for index, pull in enumerate(config.pulls):
        key = f"{where}: key pulls[{index}]"
        _check_name(pull.name, f"{key}.name")
        if pull.name in taken:
            raise ConfigError(
                f"{key}.name: {pull.name!r} is already the name of a source or another pull "
                "(it labels the events in the journal)"
            )
        taken.add(pull.name)
        for field in ("url", "ims_url"):
            value = getattr(pull, field)
            if not _HTTP_URL.fullmatch(value):
                raise ConfigError(f"{key}.{field}: {value!r} is not an http(s) URL")
        for field in ("org_id", "client_id", "scope", "client_secret_file"):
            value = getattr(pull, field)
            if not value.strip() or any(c in value for c in "\r\n\0"):
                raise ConfigError(
                    f"{key}.{field}: must be one non-empty line"
                    + (
                        " (copy the scopes of your OAuth Server-to-Server credential "
                        "from the Adobe Developer Console)"
                        if field == "scope"
                        else ""
                    )
                )
        if not valid_start(pull.start):
            raise ConfigError(
                f'{key}.start: {pull.start!r}: expected "oldest", "latest" or {WHEN_FORMS}'
            )
        if pull.min_wait > pull.max_wait:
            raise ConfigError(
                f"{key}.min_wait: {pull.min_wait:g} is larger than max_wait ({pull.max_wait:g})"
            )
        if pull.backoff_base > pull.backoff_cap:
            raise ConfigError(
                f"{key}.backoff_base: {pull.backoff_base:g} is larger than backoff_cap "
                f"({pull.backoff_cap:g})"
            )


def _validate_external(source: SourceConfig, where: str) -> None:
    o = source.oauth
    if o is None:
        return
    if source.auth != "oauth":
        raise ConfigError(f'{where}.oauth: only for auth = "oauth"')
    if o.mode == "jwt":
        if not _HTTP_URL.fullmatch(o.jwks_url):
            raise ConfigError(f"{where}.oauth.jwks_url: an http(s) URL is needed for mode jwt")
        if not o.issuer or not o.audience:
            raise ConfigError(f"{where}.oauth: mode jwt needs issuer and audience")
        from streamd.auth.external import ALLOWED_ALGORITHMS

        bad = [a for a in o.algorithms if a not in ALLOWED_ALGORITHMS]
        if bad or not o.algorithms:
            raise ConfigError(
                f"{where}.oauth.algorithms: {bad or o.algorithms!r}: only asymmetric "
                f"algorithms ({', '.join(sorted(ALLOWED_ALGORITHMS))})"
            )
    else:
        if not _HTTP_URL.fullmatch(o.introspection_url):
            raise ConfigError(
                f"{where}.oauth.introspection_url: an http(s) URL is needed for mode introspection"
            )
        if not o.client_id or not o.client_secret_file:
            raise ConfigError(
                f"{where}.oauth: introspection needs client_id and client_secret_file"
            )


def _validate_tls(server: ServerConfig, where: str) -> None:
    if bool(server.tls_certfile) != bool(server.tls_keyfile):
        missing = "tls_keyfile" if server.tls_certfile else "tls_certfile"
        raise ConfigError(f"{where}: key server.{missing}: TLS needs both a certificate and a key")
    if not server.mtls_listen:
        if server.mtls_client_ca:
            raise ConfigError(f"{where}: key server.mtls_client_ca: only with server.mtls_listen")
        return
    if not server.tls_certfile:
        raise ConfigError(
            f"{where}: key server.mtls_listen: needs server.tls_certfile and server.tls_keyfile"
        )
    if not server.mtls_client_ca:
        raise ConfigError(
            f"{where}: key server.mtls_client_ca: server.mtls_listen needs the CA that "
            "signs the client certificates"
        )
    for index, address in enumerate(server.mtls_listen):
        try:
            parse_listen(address)
        except ValueError as exc:
            raise ConfigError(f"{where}: key server.mtls_listen[{index}]: {exc}") from None


_KEY_HOST = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def _validate_adobe(source: SourceConfig, where: str) -> None:
    adobe = source.adobe
    if source.auth == "adobe-signature" and adobe is None:
        raise ConfigError(
            f'{where}.adobe: auth = "adobe-signature" needs an [sources.adobe] table with client_id'
        )
    if adobe is None:
        return
    if source.auth != "adobe-signature":
        raise ConfigError(f'{where}.adobe: only for auth = "adobe-signature"')
    if not adobe.client_id.strip():
        raise ConfigError(f"{where}.adobe.client_id: must not be empty")
    if not _KEY_HOST.fullmatch(adobe.key_host.rstrip("/")):
        raise ConfigError(
            f"{where}.adobe.key_host: {adobe.key_host!r} is not an http(s)://host[:port] URL"
        )
    from streamd.auth.adobe import KEY_PATH  # here: config must not import crypto eagerly

    for path in adobe.pinned_keys:
        if not KEY_PATH.fullmatch(path):
            raise ConfigError(
                f"{where}.adobe.pinned_keys: {path!r} is not an Adobe key path "
                "(/prod/keys/pub-key-<id>.pem)"
            )
    if not adobe.fetch_keys and not adobe.pinned_keys:
        raise ConfigError(f"{where}.adobe: fetch_keys = false needs pinned_keys")


_KIND_TABLES = ("http", "file", "sqlite", "exec")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
# Set by the http sink itself (framing, signing): a config header must not replace them.
_OWN_HEADERS = {
    "content-length", "content-type", "transfer-encoding", "host", "connection",
    "webhook-id", "webhook-timestamp", "webhook-signature",
}  # fmt: skip


def validate_sinks(config: Config, where: str) -> None:
    """Names, the kind's own table, and bounds that depend on each other."""
    names: set[str] = set()
    for index, sink in enumerate(config.sinks):
        key = f"sinks[{index}]"
        _check_name(sink.name, f"{where}: key {key}.name")
        if sink.name in names:
            raise ConfigError(f"{where}: key {key}.name: duplicate sink name {sink.name!r}")
        names.add(sink.name)
        for table in _KIND_TABLES:
            present = getattr(sink, table) is not None
            if table == sink.kind and not present:
                raise ConfigError(
                    f"{where}: key {key}.{table}: a {sink.kind} sink needs a [sinks.{table}] table"
                )
            if table != sink.kind and present:
                raise ConfigError(
                    f"{where}: key {key}.{table}: only for kind = {table!r} "
                    f"(this sink is {sink.kind!r})"
                )
        # The preset's values fill unset keys (the drain is imported here only: the
        # journal commands read the configuration and start faster without it).
        from streamd.drain import presets

        pool, retry = presets.resolve(
            sink.kind,
            sink.preset,
            {f: getattr(sink.pool, f) for f in sink.pool.__struct_fields__},
            {f: getattr(sink.retry, f) for f in sink.retry.__struct_fields__},
        )
        if pool.batch_size > pool.max_in_flight:
            raise ConfigError(
                f"{where}: key {key}.pool.batch_size: {pool.batch_size} is larger than "
                f"pool.max_in_flight ({pool.max_in_flight})"
            )
        if retry.backoff_base > retry.backoff_cap:
            raise ConfigError(
                f"{where}: key {key}.retry.backoff_base: {retry.backoff_base:g} is larger "
                f"than retry.backoff_cap ({retry.backoff_cap:g})"
            )
        if sink.http is not None and not _HTTP_URL.fullmatch(sink.http.url):
            raise ConfigError(
                f"{where}: key {key}.http.url: {sink.http.url!r} is not an http:// or https:// URL"
            )
        if sink.http is not None:
            for header, value in sink.http.headers.items():
                if not _TOKEN.fullmatch(header) or header.lower() in _OWN_HEADERS:
                    raise ConfigError(
                        f"{where}: key {key}.http.headers: {header!r} is not a header name "
                        "streamd lets you set"
                    )
                if any(c in value for c in "\r\n\0"):
                    raise ConfigError(
                        f"{where}: key {key}.http.headers.{header}: a value cannot hold line breaks"
                    )
        if sink.exec is not None and not sink.exec.command[0]:
            raise ConfigError(f"{where}: key {key}.exec.command[0]: must not be empty")
        if sink.file is not None and not sink.file.directory:
            raise ConfigError(f"{where}: key {key}.file.directory: must not be empty")
        if sink.sqlite is not None and not sink.sqlite.path:
            raise ConfigError(f"{where}: key {key}.sqlite.path: must not be empty")
        for findex, f in enumerate(sink.filters):
            if not (f.streams or f.types or f.munchkin_ids or f.activity_type_ids or f.sources):
                raise ConfigError(
                    f"{where}: key {key}.filters[{findex}]: an empty filter matches everything; "
                    "leave out filters to take every event"
                )


def type_filter_warnings(config: Config) -> list[str]:
    """What is suspicious about the sinks' ``types`` filters: each glob in Marketo's
    namespace that matches none of the documented event types (a misspelt type routes
    nothing, silently). Never an error: Marketo has more types than it documents.
    ``streamd.core.event_types`` has the rule."""
    warnings = []
    for index, sink in enumerate(config.sinks):
        for findex, f in enumerate(sink.filters):
            for tindex, glob in enumerate(f.types):
                problem = unmatched_type_glob(glob)
                if problem is not None:
                    warnings.append(
                        f"key sinks[{index}].filters[{findex}].types[{tindex}] (sink "
                        f"{sink.name!r}): {problem}, so it routes none of them to this sink"
                    )
    return warnings


def warn_about_type_filters(config: Config) -> None:
    """Log :func:`type_filter_warnings` as warnings (``check-config`` and ``serve``)."""
    for warning in type_filter_warnings(config):
        log.warning("%s", warning)


def _validate_admin(config: Config, where: str, overrides: bool) -> None:
    for index, address in enumerate(config.admin.addresses):
        try:
            parse_listen(address)
        except ValueError as exc:
            origin = _admin_origin(index, overrides)
            raise ConfigError(f"{where}: {origin}: {exc}") from None


def _admin_origin(index: int, overrides: bool) -> str:
    return "--admin-listen" if overrides else f"key admin.listen[{index}]"


_Endpoint = tuple[str, str, int, "ipaddress.IPv4Address | ipaddress.IPv6Address"]


def _validate_listeners(config: Config, where: str, overrides: bool, admin_overrides: bool) -> None:
    """No two listeners (server.listen, server.mtls_listen, admin.listen) may take the
    same port on overlapping addresses: ``localhost`` is 127.0.0.1, ``0.0.0.0`` is every
    IPv4 address and ``[::]`` every address (dual stack), as the kernel sees it at
    ``listen()``."""
    endpoints: list[_Endpoint] = []
    named = [
        (address, "--listen" if overrides else f"key server.listen[{i}]")
        for i, address in enumerate(config.server.listen)
    ]
    named += [(a, f"key server.mtls_listen[{i}]") for i, a in enumerate(config.server.mtls_listen)]
    named += [(a, _admin_origin(i, admin_overrides)) for i, a in enumerate(config.admin.addresses)]
    for address, origin in named:
        host, port = parse_listen(address)
        ip = _resolve(host, port, f"{where}: {origin}")
        for other_address, other_origin, other_port, other_ip in endpoints:
            if port and port == other_port and _overlap(ip, other_ip):
                raise ConfigError(
                    f"{where}: {origin}: {address} overlaps {other_address} ({other_origin}): "
                    "each listener needs its own address or port"
                )
        endpoints.append((address, origin, port, ip))


def _resolve(host: str, port: int, where: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address a listener binds for ``host``, resolved as the bind will resolve it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        ip = ipaddress.ip_address(str(infos[0][4][0]).split("%", 1)[0])
    except (OSError, ValueError, IndexError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{where}: cannot resolve {host!r}: {reason}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _overlap(
    a: ipaddress.IPv4Address | ipaddress.IPv6Address,
    b: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    if a.version == b.version:
        return a == b or a.is_unspecified or b.is_unspecified
    # An IPv6 wildcard listens on IPv4 too (Linux's default, bindv6only=0).
    v6 = a if a.version == 6 else b
    return v6.is_unspecified


def parse_listen(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT``; raises ``ValueError`` with a hint."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"{address!r}: unbalanced brackets around the IPv6 address")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{address!r}: write an IPv6 address in brackets, e.g. [::1]:8080")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r}: port must be a number from 0 to 65535")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{address!r}: the host is empty or has spaces")
    return host, int(port)
