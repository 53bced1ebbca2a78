"""``streamd check-config``: can this machine reach the shared engines it names?

A warning, never a refusal: a destination that is down at start-up is what the journal
is for (it buffers, the sink retries). Only TCP is tried — a connection opened and
closed, no log-in — so the check is quick and needs no secret.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from streamd.service.config import Config

_PG_PORT = 5432
_KAFKA_PORT = 9092
_NATS_PORT = 4222


def _pg_hosts(dsn: str) -> list[tuple[str, int]]:
    """Host and port pairs of a libpq connection string (several for failover); the
    Unix-socket ones (a path) are left out."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:  # malformed: the config checks report it
        return []
    hosts = str(params.get("host") or params.get("hostaddr") or "localhost").split(",")
    ports = str(params.get("port") or _PG_PORT).split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return [
        (host, int(port) if port.isdigit() else _PG_PORT)
        for host, port in zip(hosts, ports, strict=False)
        if host and not host.startswith("/")
    ]


def _host_port(text: str, default: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text.strip("[]"), default
    return host.strip("[]"), int(port) if port.isdigit() else default


def engine_addresses(config: Config) -> Iterator[tuple[str, str, int]]:
    """(what, host, port) of every shared engine the configuration names."""
    for index, sink in enumerate(config.sinks):
        what = f"sinks[{index}] ({sink.name})"
        if sink.postgres is not None:
            for host, port in _pg_hosts(sink.postgres.dsn):
                yield what, host, port
        if sink.kafka is not None:
            for server in sink.kafka.bootstrap_servers:
                yield (what, *_host_port(server, _KAFKA_PORT))
        if sink.nats is not None:
            for url in sink.nats.servers:
                parts = urlsplit(url)
                yield what, parts.hostname or "", parts.port or _NATS_PORT
    for index, pull in enumerate(config.pulls):
        if pull.lease is not None:
            for host, port in _pg_hosts(pull.lease.dsn):
                yield f"pulls[{index}].lease ({pull.name})", host, port


def _try(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def unreachable(config: Config, timeout: float = 2.0) -> list[str]:
    """A warning for each engine address no TCP connection reached within ``timeout``."""
    targets = list(dict.fromkeys(engine_addresses(config)))
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        outcomes = list(pool.map(lambda t: _try(t[1], t[2], timeout), targets))
    return [
        f"{what}: cannot reach {host}:{port} ({why}); streamd starts anyway and the journal "
        "keeps the events until it can"
        for (what, host, port), why in zip(targets, outcomes, strict=True)
        if why is not None
    ]
