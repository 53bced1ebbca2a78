"""What an ingest process serves with: each source's credentials and checkers, the
ingest app's bounds and the embedded OAuth issuer, read from the configuration.

The main process (:mod:`streamd.service.startup`, a SIGHUP reload) and every ingest
worker (:mod:`streamd.service.worker`) build their sources here. This module imports
only the ingest side (the journal's records, not its writer's threads): no drain,
pulls, admin app or inspection, and no HTTP client, JWT library or cryptography until
a source needs one (ARCHITECTURE.md, "What a process imports").
Every problem is a :class:`ConfigError` naming the file or key.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
from collections.abc import Callable

from streamd.auth import TokenSet, ensure_token_file, loose_permissions, read_token_file
from streamd.auth.adobe import KeyStore, SignatureCheck, load_public_key
from streamd.auth.client_cert import ClientCertCheck
from streamd.auth.external import Introspector, JwtVerifier
from streamd.auth.issuer import Issuer, load_or_create_key
from streamd.errors import ConfigError
from streamd.ingest import Limits, Source
from streamd.ingest.validation import Validator
from streamd.service.config import Config, SourceConfig

log = logging.getLogger("streamd.service")
_MiB = 1024 * 1024


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
