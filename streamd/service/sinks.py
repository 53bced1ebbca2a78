"""From ``[[sinks]]`` config to the drain's :class:`SinkSpec`s (reading secret files)."""

from __future__ import annotations

import os
import sys
from typing import Any

import msgspec

from streamd.auth import loose_permissions
from streamd.drain import Filter, Route, SinkSpec, presets
from streamd.drain.policy import RetrySettings
from streamd.drain.presets import PoolSettings
from streamd.drain.sinks.base import Sink
from streamd.drain.sinks.exec import ExecSettings, ExecSink
from streamd.drain.sinks.file import FileSettings, FileSink
from streamd.drain.sinks.http import HttpSettings, HttpSink, load_signing_key, parse_secret
from streamd.drain.sinks.sqlite import SqliteSettings, SqliteSink
from streamd.drain.sinks.stdout import StdoutSink
from streamd.errors import ConfigError
from streamd.service.config import Config, SinkConfig
from streamd.service.logs import current_format

_MAX_SECRET_FILE = 64 * 1024


def resolve(sink: SinkConfig) -> tuple[PoolSettings, RetrySettings]:
    """The preset's pool and retry settings with the keys the sink sets on top."""
    return presets.resolve(sink.kind, sink.preset, _fields(sink.pool), _fields(sink.retry))


def _fields(struct: msgspec.Struct) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise ConfigError(f"{path}: the {what} file is larger than {_MAX_SECRET_FILE} bytes")
    return data


def _read_lines(path: str, what: str) -> list[str]:
    data = _read_file(path, what)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} file is not UTF-8 text") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise ConfigError(f"{path}: the {what} file holds no {what}")
    return lines


def _opener(config: Config, sink: SinkConfig, pool: PoolSettings) -> object:
    prefix = f"sinks {sink.name!r}"
    if sink.kind == "http":
        assert sink.http is not None
        h = sink.http
        token = None
        if h.bearer_token_file:
            token = _read_lines(h.bearer_token_file, "bearer token")[0]
        secrets = []
        for path in h.secret_files:
            secrets += [parse_secret(line, path) for line in _read_lines(path, "signing secret")]
        adobe_key = None
        if h.adobe_signing_key_file:
            adobe_key = load_signing_key(
                _read_file(h.adobe_signing_key_file, "Adobe signing key"),
                f"{prefix}: http.adobe_signing_key_file {h.adobe_signing_key_file}",
            )
        for path in [h.bearer_token_file, *h.secret_files, h.adobe_signing_key_file]:
            if path and loose_permissions(path):
                print(f"streamd: warning: {path} is readable by group or others", file=sys.stderr)
        settings = HttpSettings(
            url=h.url,
            sink=sink.name,
            headers=dict(h.headers),
            bearer_token=token,
            secrets=tuple(secrets),
            connections=pool.workers + 1,
            timeout=pool.timeout,
            format=h.format,
            recipient_client_id=h.recipient_client_id,
            adobe_key=adobe_key,
            adobe_key_path=h.adobe_key_path,
        )
        return lambda: HttpSink(settings)
    if sink.kind == "file":
        assert sink.file is not None
        f = sink.file
        fs = FileSettings(
            directory=os.path.join(config.data_dir, f.directory)
            if not os.path.isabs(f.directory)
            else f.directory,
            prefix=f.prefix or sink.name,
            max_bytes=f.max_bytes,
            max_age=f.max_age,
            gzip=f.gzip,
            fsync=f.fsync,
        )
        return lambda: FileSink(fs)
    if sink.kind == "sqlite":
        assert sink.sqlite is not None
        path = sink.sqlite.path
        ss = SqliteSettings(
            path if os.path.isabs(path) else os.path.join(config.data_dir, path),
            sink.sqlite.table_prefix,
            tuple(dict.fromkeys(sink.sqlite.indexes)),
            journal=config.journal_path,
        )
        return lambda: SqliteSink(ss)
    if sink.kind == "exec":
        assert sink.exec is not None
        es = ExecSettings(tuple(sink.exec.command), dict(sink.exec.env), sink.exec.cwd or None)
        return lambda: ExecSink(es)
    if sink.kind == "stdout":
        return lambda: StdoutSink()
    if sink.kind in ("postgres", "kafka", "nats"):
        return _engine_opener(config, sink, pool)
    raise ConfigError(f"{prefix}: unknown kind {sink.kind!r}")  # pragma: no cover


def _secret(path: str, what: str) -> str:
    if loose_permissions(path):
        print(f"streamd: warning: {path} is readable by group or others", file=sys.stderr)
    return _read_lines(path, what)[0]


def _engine_opener(config: Config, sink: SinkConfig, pool: PoolSettings) -> object:
    """The shared engines' sinks; their client libraries are imported only here."""
    instance = config.instance_name
    if sink.kind == "postgres":
        from streamd.drain.sinks.postgres import PostgresSettings, PostgresSink

        assert sink.postgres is not None
        p = sink.postgres
        ps = PostgresSettings(
            dsn=p.dsn,
            password=_secret(p.password_file, "password") if p.password_file else None,
            table=p.table,
            manage_table=p.manage_table,
            instance=instance,
            connect_timeout=p.connect_timeout,
            sink=sink.name,
        )
        return lambda: PostgresSink(ps)
    if sink.kind == "kafka":
        from streamd.drain.sinks.kafka import KafkaSettings, KafkaSink

        assert sink.kafka is not None
        k = sink.kafka
        ks = KafkaSettings(
            bootstrap_servers=tuple(k.bootstrap_servers),
            topic=k.topic,
            key=k.key,
            properties=dict(k.properties),
            password=_secret(k.password_file, "password") if k.password_file else None,
            instance=instance,
            timeout=pool.timeout,
            sink=sink.name,
            log_format=current_format(),
        )
        return lambda: KafkaSink(ks)
    from streamd.drain.sinks.nats import NatsSettings, NatsSink

    assert sink.nats is not None
    n = sink.nats
    ns = NatsSettings(
        servers=tuple(n.servers),
        stream=n.stream,
        subject=n.subject,
        manage_stream=n.manage_stream,
        duplicate_window=n.duplicate_window,
        replicas=n.replicas,
        token=_secret(n.token_file, "token") if n.token_file else None,
        credentials_file=n.credentials_file or None,
        instance=instance,
        timeout=pool.timeout,
        sink=sink.name,
    )
    return lambda: NatsSink(ns)


def build_specs(config: Config) -> list[SinkSpec]:
    """The drain's sink specs; reads token and secret files (raises :class:`ConfigError`
    naming the file and the problem)."""
    specs = []
    for sink in config.sinks:
        pool, retry = resolve(sink)
        reads = drain_reads(sink.kind, _converts(sink))
        route = Route(
            [
                Filter(
                    streams=tuple(f.streams),
                    types=tuple(f.types),
                    munchkin_ids=tuple(f.munchkin_ids),
                    activity_type_ids=tuple(f.activity_type_ids),
                    sources=tuple(f.sources),
                )
                for f in sink.filters
            ]
        )
        opener = _opener(config, sink, pool)
        specs.append(
            SinkSpec(
                name=sink.name,
                kind=sink.kind,
                route=route,
                open_sink=opener,  # type: ignore[arg-type]
                workers=pool.workers,
                batch_size=pool.batch_size,
                linger=pool.linger,
                interval=pool.interval,
                max_in_flight=pool.max_in_flight,
                timeout=pool.timeout,
                start=sink.start,
                retry=retry,
                full_events=reads[0],
                envelopes=reads[1],
                dedups=sink.kind in ("postgres", "nats"),
                restart_reasons=_restart_reasons(sink.kind),
            )
        )
    return specs


def _restart_reasons(kind: str) -> tuple[str, ...]:
    """How the sink's own client process can end (kafka), for counting its restarts."""
    if kind != "kafka":
        return ()
    from streamd.drain.sinks.kafka import RESTART_REASONS  # imported by its opener already

    return RESTART_REASONS


def drain_reads(kind: str, converts: bool = False) -> tuple[bool, bool]:
    """What the drain reads for a sink of ``kind``: (every column and the event's JSON,
    the envelope built by the reader). ``converts``: an http sink whose body is not
    streamd's envelope."""
    # Most kinds send envelopes or copy rows from the journal themselves; the shared
    # engines store the columns apart or key and label messages with them.
    full = kind in ("postgres", "kafka", "nats") or converts
    # A converting http sink reads each event's JSON and columns, not envelopes; postgres
    # stores the columns and the JSON apart; kafka's producer process builds them (off
    # the daemon's GIL); sqlite copies rows from the journal itself.
    envelopes = kind not in ("sqlite", "postgres", "kafka") and not converts
    return full, envelopes


def _converts(sink: SinkConfig) -> bool:
    """An http sink whose body is not streamd's envelope (streamd.drain.bodies)."""
    return sink.http is not None and sink.http.format != "streamd"


__all__ = ["Sink", "build_specs", "drain_reads", "resolve"]
