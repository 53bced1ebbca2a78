"""What types alone cannot check in a configuration: addresses and their overlaps,
names, paths, uniqueness, bounds that depend on each other, TLS files, and the
sinks' and pulls' settings. :func:`streamd.service.config.load_config` calls
:func:`validate`; nothing here reads the configuration file itself.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from typing import TYPE_CHECKING

from streamd.core.event_types import unmatched_type_glob
from streamd.errors import ConfigError

if TYPE_CHECKING:  # the records only: config.py imports this module
    from streamd.service.config import Config, ServerConfig, SinkConfig, SourceConfig

log = logging.getLogger("streamd.config")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HTTP_URL = re.compile(r"https?://[^\s/]+(/\S*)?")  # sinks, identity providers, pulls
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]{0,255}")


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
        _validate_client_cert(config, source, f"{where}: key {key}")
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
        if pull.lease is not None:
            check_dsn(pull.lease.dsn, f"{key}.lease.dsn", "lease.password_file")
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


def _validate_client_cert(config: Config, source: SourceConfig, where: str) -> None:
    pins = source.client_cert
    if source.auth != "client-cert":
        if pins is not None:
            raise ConfigError(f'{where}.client_cert: only for auth = "client-cert"')
        return
    if not config.server.mtls_listen:
        raise ConfigError(
            f'{where}.auth: "client-cert" needs server.mtls_listen and server.mtls_client_ca '
            "(the listener that verifies client certificates)"
        )
    if source.token_files:
        raise ConfigError(
            f'{where}.token_files: not used by auth = "client-cert" (the client certificate '
            "is the credential; a token a request brings is ignored)"
        )
    if pins is None:
        return
    if not (pins.subjects or pins.common_names or pins.sha256_fingerprints):
        raise ConfigError(
            f"{where}.client_cert: pins nothing; set subjects, common_names or "
            "sha256_fingerprints, or leave the table out to accept any certificate "
            "server.mtls_client_ca signs"
        )
    from streamd.auth.client_cert import parse_fingerprint, parse_subject  # crypto: lazily

    for index, subject in enumerate(pins.subjects):
        try:
            parse_subject(subject)
        except ValueError as exc:
            raise ConfigError(f"{where}.client_cert.subjects[{index}]: {exc}") from None
    for index, name in enumerate(pins.common_names):
        if not name.strip() or any(c in name for c in "\r\n\0"):
            raise ConfigError(
                f"{where}.client_cert.common_names[{index}]: {name[:120]!r}: a common name "
                "is one non-empty line"
            )
    for index, fingerprint in enumerate(pins.sha256_fingerprints):
        try:
            parse_fingerprint(fingerprint)
        except ValueError as exc:
            raise ConfigError(f"{where}.client_cert.sha256_fingerprints[{index}]: {exc}") from None


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


_KIND_TABLES = ("http", "file", "sqlite", "exec", "postgres", "kafka", "nats")
_TEMPLATE_FIELDS = ("stream", "type", "source", "munchkin_id")
# librdkafka properties streamd sets itself: what makes a delivery confirmed and ordered.
KAFKA_OWN_PROPERTIES = frozenset({
    "bootstrap.servers", "acks", "request.required.acks", "enable.idempotence",
    "max.in.flight.requests.per.connection", "max.in.flight", "transactional.id",
    "enable.gapless.guarantee", "delivery.report.only.error", "dr_cb", "dr_msg_cb",
    "error_cb", "sasl.password", "message.timeout.ms", "delivery.timeout.ms",
})  # fmt: skip
_NATS_URL = re.compile(r"(nats|tls)://[^\s/]+")
_DSN_PASSWORD = re.compile(r"(?i)(^|\s)password\s*=|^postgres(ql)?://[^/@]*:[^/@]*@")
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
            _check_http_format(sink, f"{where}: key {key}")
        if sink.exec is not None and not sink.exec.command[0]:
            raise ConfigError(f"{where}: key {key}.exec.command[0]: must not be empty")
        if sink.file is not None and not sink.file.directory:
            raise ConfigError(f"{where}: key {key}.file.directory: must not be empty")
        if sink.sqlite is not None and not sink.sqlite.path:
            raise ConfigError(f"{where}: key {key}.sqlite.path: must not be empty")
        _check_engines(sink, f"{where}: key {key}")
        for findex, f in enumerate(sink.filters):
            if not (f.streams or f.types or f.munchkin_ids or f.activity_type_ids or f.sources):
                raise ConfigError(
                    f"{where}: key {key}.filters[{findex}]: an empty filter matches everything; "
                    "leave out filters to take every event"
                )


_ACTIVITY_TYPES = "com.adobe.platform.marketo.activity."


def _check_http_format(sink: SinkConfig, where: str) -> None:
    """legacy-push carries lead activities only: its filters must select nothing else
    (each event the format cannot carry would become a dead letter)."""
    assert sink.http is not None
    fmt = sink.http.format
    if sink.http.recipient_client_id and not fmt.startswith("cloudevents"):
        raise ConfigError(
            f'{where}.http.recipient_client_id: only for format = "cloudevents" or '
            f'"cloudevents-single" (this sink\'s format is {fmt!r})'
        )
    http = sink.http
    if (http.adobe_signing_key_file or http.adobe_key_path) and not fmt.startswith("cloudevents"):
        which = "adobe_signing_key_file" if http.adobe_signing_key_file else "adobe_key_path"
        raise ConfigError(
            f'{where}.http.{which}: Adobe signatures are only for format = "cloudevents" or '
            f'"cloudevents-single" (this sink\'s format is {fmt!r})'
        )
    if bool(http.adobe_signing_key_file) != bool(http.adobe_key_path):
        missing = "adobe_key_path" if http.adobe_signing_key_file else "adobe_signing_key_file"
        raise ConfigError(
            f"{where}.http.{missing}: needed with "
            + ("adobe_signing_key_file" if missing == "adobe_key_path" else "adobe_key_path")
        )
    from streamd.auth.adobe import KEY_PATH  # here: config must not import crypto eagerly

    if http.adobe_key_path and not KEY_PATH.fullmatch(http.adobe_key_path):
        raise ConfigError(
            f"{where}.http.adobe_key_path: {http.adobe_key_path!r} is not an Adobe key path "
            "(/prod/keys/pub-key-<id>.pem), which a receiver would refuse"
        )
    if fmt != "legacy-push":
        return
    if not sink.filters:
        raise ConfigError(
            f'{where}.http.format: "legacy-push" carries lead activities only, and a sink '
            'without filters takes every stream: add [[sinks.filters]] streams = ["activity"]'
        )
    for index, f in enumerate(sink.filters):
        if f.streams and set(f.streams) == {"activity"}:
            continue
        if f.types and all(t.startswith(_ACTIVITY_TYPES) for t in f.types):
            continue
        raise ConfigError(
            f'{where}.filters[{index}]: the sink\'s format "legacy-push" carries lead '
            'activities only, and this filter can select other streams: add streams = ["activity"]'
        )


def _check_template(template: str, where: str) -> None:
    """A topic or subject template: text and ``{field}`` placeholders, nothing else."""
    import string

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: {template!r} is not a template: {exc}") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in _TEMPLATE_FIELDS or spec or conversion:
            raise ConfigError(
                f"{where}: {{{field}}} is not a placeholder streamd fills; use "
                + ", ".join(f"{{{f}}}" for f in _TEMPLATE_FIELDS)
            )
    if not template.strip():
        raise ConfigError(f"{where}: must not be empty")


def check_dsn(dsn: str, where: str, password_key: str) -> None:
    """A PostgreSQL connection string: present, libpq can parse it, and it holds no
    password (that belongs in ``password_key``'s file)."""
    if not dsn.strip():
        raise ConfigError(f"{where}: must not be empty")
    if _DSN_PASSWORD.search(dsn):
        raise ConfigError(
            f"{where}: holds a password; put it in {password_key} "
            "(the configuration is not a secret)"
        )
    _check_dsn(dsn, where, password_key)


def _check_subject(template: str, manage_stream: bool, where: str) -> None:
    """A NATS subject template: dot-separated tokens, none empty, no wildcard or space in
    its literal text (placeholders' values are made safe when they are filled)."""
    literal = re.sub(r"\{[a-z_]+\}", "x", template)
    if any(c.isspace() or c in "*>" for c in literal):
        raise ConfigError(f"{where}: {template!r}: a subject holds no spaces, '*' or '>'")
    if any(not token for token in literal.split(".")):
        raise ConfigError(f"{where}: {template!r}: a subject has no empty token ('..', or a "
                          "'.' at either end)")  # fmt: skip
    if manage_stream and "{" in template.split(".", 1)[0]:
        raise ConfigError(
            f'{where}: {template!r}: begin with a literal token ("streamd.{{stream}}"): '
            "the stream streamd creates takes the subjects under it, and a first token "
            "that varies would take other applications' subjects too"
        )


def _check_engines(sink: SinkConfig, where: str) -> None:
    """The postgres, kafka and nats tables: what TOML types cannot say."""
    if sink.postgres is not None:
        check_dsn(sink.postgres.dsn, f"{where}.postgres.dsn", "postgres.password_file")
    if sink.kafka is not None:
        _check_template(sink.kafka.topic, f"{where}.kafka.topic")
        for name in sink.kafka.properties:
            if name in KAFKA_OWN_PROPERTIES:
                raise ConfigError(
                    f"{where}.kafka.properties: {name!r} is set by streamd (acks=all, "
                    "idempotence, delivery reports"
                    + ("; use kafka.password_file" if name == "sasl.password" else "")
                    + ")"
                )
        for server in sink.kafka.bootstrap_servers:
            if not server or any(c.isspace() for c in server) or "/" in server:
                raise ConfigError(f"{where}.kafka.bootstrap_servers: {server!r} is not HOST:PORT")
    if sink.nats is not None:
        _check_template(sink.nats.subject, f"{where}.nats.subject")
        _check_subject(sink.nats.subject, sink.nats.manage_stream, f"{where}.nats.subject")
        for server in sink.nats.servers:
            if not _NATS_URL.fullmatch(server):
                raise ConfigError(
                    f"{where}.nats.servers: {server!r} is not a nats:// or tls:// URL"
                )
        if sink.nats.token_file and sink.nats.credentials_file:
            raise ConfigError(
                f"{where}.nats: token_file and credentials_file: set one of them, not both"
            )


def _check_dsn(dsn: str, where: str, password_key: str) -> None:
    """libpq's own parse of the connection string (psycopg is imported only for a
    postgres sink): a typo is an error now, not a sink that never connects."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        options = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"{where}: not a libpq connection string or URI: {problem}") from None
    if "password" in options:  # a URI's ?password=, or one the regex did not see
        raise ConfigError(
            f"{where}: holds a password; put it in {password_key} "
            "(the configuration is not a secret)"
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
