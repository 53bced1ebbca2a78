"""``streamd check-config``: can this machine reach the shared engines it names?

A warning, never a refusal: a destination that is down at start-up is what the journal
is for (it buffers, the sink retries). Each address gets the first exchange of its
protocol, no log-in, so the check is quick and needs no secret: PostgreSQL answers an
``SSLRequest`` with one byte, a NATS server greets with ``INFO``, a Kafka broker
answers ``ApiVersions``. A TCP connection alone proves little (a proxy or a firewall
may accept it for anything).
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


def engine_addresses(config: Config) -> Iterator[tuple[str, str, str, int]]:
    """(what, protocol, host, port) of every shared engine the configuration names."""
    for index, sink in enumerate(config.sinks):
        what = f"sinks[{index}] ({sink.name})"
        if sink.postgres is not None:
            for host, port in _pg_hosts(sink.postgres.dsn):
                yield what, "postgres", host, port
        if sink.kafka is not None:
            for server in sink.kafka.bootstrap_servers:
                yield (what, "kafka", *_host_port(server, _KAFKA_PORT))
        if sink.nats is not None:
            for url in sink.nats.servers:
                parts = urlsplit(url)
                yield what, "nats", parts.hostname or "", parts.port or _NATS_PORT
    for index, pull in enumerate(config.pulls):
        if pull.lease is not None:
            for host, port in _pg_hosts(pull.lease.dsn):
                yield f"pulls[{index}].lease ({pull.name})", "postgres", host, port


_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
# ApiVersions v0: size, api key 18, version 0, correlation id 7, no client id.
_API_VERSIONS = b"\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff"


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _try(protocol: str, host: str, port: int, timeout: float) -> str | None:
    """None when a ``protocol`` server answered at host:port; else what went wrong."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if protocol == "postgres":
                sock.sendall(_SSL_REQUEST)
                ok = _recv(sock, 1) in (b"S", b"N")
            elif protocol == "nats":
                ok = _recv(sock, 4) == b"INFO"
            else:
                sock.sendall(_API_VERSIONS)
                ok = _recv(sock, 8)[4:8] == b"\x00\x00\x00\x07"
    except TimeoutError:
        return f"no {protocol} answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None if ok else f"what answered there is not a {protocol} server"


def unreachable(config: Config, timeout: float = 2.0) -> list[str]:
    """A warning for each engine address no TCP connection reached within ``timeout``."""
    targets = list(dict.fromkeys(engine_addresses(config)))
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        outcomes = list(pool.map(lambda t: _try(t[1], t[2], t[3], timeout), targets))
    return [
        f"{what}: cannot reach {host}:{port} ({why}); streamd starts anyway and the journal "
        "keeps the events until it can"
        for (what, _, host, port), why in zip(targets, outcomes, strict=True)
        if why is not None
    ]
