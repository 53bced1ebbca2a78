"""Through the real daemon: two ``streamd serve`` receivers publish into one stream."""

from __future__ import annotations

import http.client
import re
from collections import Counter
from pathlib import Path

from tests.engines._nats import NatsCluster
from tests.hostile._faults import admin_url
from tests.system._harness import (
    Processes,
    fixture_bytes,
    journal_keys,
    legacy_ids,
    post,
    read_token,
    serve,
    stop_gracefully,
    wait_for,
)


def destination_counts(admin: str, token: str) -> dict[str, float]:
    """``streamd_sink_destination_events_total`` of the sink ``bus``, by outcome."""
    host, port = admin.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200, text
    found = {}
    for m in re.finditer(r"^streamd_sink_destination_events_total\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("sink") == "bus":
            found[labels["outcome"]] = float(m.group(2))
    return found


def test_two_daemons_deliver_each_event_once(
    cluster: NatsCluster, stream_name: str, tmp_path: Path, processes: Processes
) -> None:
    servers = ", ".join(f'"{u}"' for u in cluster.urls)

    def start(name: str):  # type: ignore[no-untyped-def]
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'instance = "{name}"\n[[sinks]]\nname = "bus"\nkind = "nats"\n'
            f"[sinks.pool]\nlinger = 0.01\n[sinks.nats]\nservers = [{servers}]\n"
            f'stream = "{stream_name}"\nsubject = "{stream_name.lower()}.{{stream}}.{{type}}"\n'
            "replicas = 3\n"
        )
        data = tmp_path / name
        server = serve(processes, data, args=["--config", str(config)], name=name)
        return server, admin_url(server), read_token(data / "admin-token")

    a, admin_a, token_a = start("recv-a")
    legacy = fixture_bytes("legacy_push.json")
    lads = fixture_bytes("lads_batch.json")
    assert post(a.port, legacy, token=a.token()).status == 200
    assert post(a.port, lads, token=a.token()).status == 200
    assert post(a.port, legacy, token=a.token()).status == 200  # the sender's re-send
    keys = journal_keys(a.journal)
    assert all(n == 1 for n in keys.values()) and set(legacy_ids(legacy)) <= set(keys)
    total = len(keys)
    wait_for(lambda: destination_counts(admin_a, token_a).get("new") == total, timeout=30,
             what="receiver a's events at the stream", context=a.spawned.stderr)  # fmt: skip

    # A second receiver gets the same legacy push (the load balancer's retry went there).
    b, admin_b, token_b = start("recv-b")
    assert post(b.port, legacy, token=b.token()).status == 200
    n_legacy = len(legacy_ids(legacy))
    wait_for(lambda: destination_counts(admin_b, token_b) == {"new": 0, "present": n_legacy},
             timeout=30, what="receiver b's copies counted as present",
             context=b.spawned.stderr)  # fmt: skip
    assert destination_counts(admin_a, token_a) == {"new": total, "present": 0}
    stop_gracefully(a)
    stop_gracefully(b)

    stored = cluster.messages(stream_name)
    assert Counter(m.headers["Nats-Msg-Id"] for m in stored) == Counter(keys)
    assert {m.headers["Streamd-Instance"] for m in stored} == {"recv-a"}
    assert "Traceback" not in a.spawned.stderr() + b.spawned.stderr()
