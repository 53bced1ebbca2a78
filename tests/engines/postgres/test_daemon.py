"""Through the real daemon: ``streamd serve`` journals real Marketo deliveries (and a
re-send), drains them into PostgreSQL, and /metrics shows the sink's counters."""

from __future__ import annotations

import http.client
import re
from pathlib import Path

import trio

from streamd.core import decode_delivery
from streamd.drain import DrainEvent, Kind
from streamd.drain.sinks.postgres import PostgresSink
from tests.conftest import fixture_bytes
from tests.engines._postgres import PASSWORD
from tests.system._harness import Processes, post, read_token, serve, wait_for

from .conftest import FIXTURE_NAMES, Database

ADMIN = re.compile(r"^streamd admin ready: http://127\.0\.0\.1:(\d+)\n", re.MULTILINE)


def metrics(port: int, token: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_daemon_delivers_each_event_once(
    pg: Database, processes: Processes, tmp_path: Path
) -> None:
    password_file = tmp_path / "pg-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    config = tmp_path / "streamd.toml"
    config.write_text(
        'instance = "receiver-1"\n'
        "[[sinks]]\n"
        'name = "warehouse"\n'
        'kind = "postgres"\n'
        "pool = { linger = 0.05 }\n"
        "[sinks.postgres]\n"
        f'dsn = "{pg.dsn}"\n'
        f'password_file = "{password_file}"\n'
        'table = "marketing.events"\n'
    )
    # Another receiver already delivered one of the events: present, not new.
    first = decode_delivery(fixture_bytes("lads_single")).events[0]
    other = PostgresSink(pg.settings(table="marketing.events", instance="receiver-0"))
    earlier = DrainEvent(seq=1, key=first.key, stream=first.stream, type=first.type,
                         munchkin_id=first.munchkin_id, activity_type_id=first.activity_type_id,
                         source="events", occurred_at=first.occurred_at,
                         received_at="2026-01-01T00:00:00.000Z", raw=first.raw)  # fmt: skip
    assert trio.run(other.deliver, [earlier]).kind is Kind.CONFIRMED
    trio.run(other.aclose)
    server = serve(processes, tmp_path / "data", args=["--config", str(config)])
    found = wait_for(lambda: ADMIN.search(server.spawned.stdout()), timeout=15, what="admin")
    assert found is not None
    admin = int(found.group(1))
    token = server.token()
    admin_token = read_token(tmp_path / "data" / "admin-token")
    for name in FIXTURE_NAMES:
        assert post(server.port, fixture_bytes(name), token=token).status == 200
    assert post(server.port, fixture_bytes("lads_batch"), token=token).status == 200  # re-send

    journal = dict(_journal(server.journal))
    total = len(journal)
    wait_for(
        lambda: sample(metrics(admin, admin_token), "streamd_sink_lag_events", sink="warehouse")
        == 0,
        timeout=30, what="the sink's lag at 0",
        context=server.spawned.stderr,
    )  # fmt: skip
    rows = pg.sql("SELECT event_key, seq, instance FROM marketing.events")
    assert sorted(r[0] for r in rows) == sorted(journal)  # each accepted event, once
    for key, seq, instance in rows:
        if key == first.key:
            assert instance == "receiver-0"
        else:
            assert (seq, instance) == (journal[key], "receiver-1")
    text = metrics(admin, admin_token)
    assert sample(text, "streamd_sink_destination_events_total", sink="warehouse",
                  outcome="new") == total - 1  # fmt: skip
    assert sample(text, "streamd_sink_destination_events_total", sink="warehouse",
                  outcome="present") == 1  # fmt: skip
    assert sample(text, "streamd_sink_delivered_events_total", sink="warehouse") == total
    assert sample(text, "streamd_sink_lag_seconds", sink="warehouse") == 0


def _journal(path: Path) -> list[tuple[str, int]]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT event_key, seq FROM events"))
    finally:
        conn.close()
