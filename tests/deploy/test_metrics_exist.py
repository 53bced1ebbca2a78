"""Every metric the alert rules and the dashboard read is one a real streamd exports.

A real ``streamd serve`` (with a file sink, a kafka sink and a pull source that pulls
from a real ``streamd emit --journal-server``) gets traffic until every labelled family has a
series; its admin ``/metrics`` is then scraped, and each name the rules' and the
dashboard's expressions read must be a sample name there (``_total``, ``_bucket``,
``_sum`` and ``_count`` included: the exposition has exactly those names).

Families that need traffic to appear, and what makes them here:
``streamd_requests_total`` and ``streamd_ack_latency_seconds_bucket`` (a POST answered
200), ``streamd_unavailable_responses_total`` (a 503: a second POST while the source's
only in-flight slot is held), ``streamd_munchkin_silence_seconds`` (an event with a
Munchkin id), ``streamd_sink_*`` (a sink configured), ``streamd_pull_*`` (a pull
source running). ``streamd_sink_producer_restarts_total`` is a kafka sink's only: its
series are there, at 0, from the start, whether or not its producer process ever ran;
the kafka sink here takes no event (its filter matches none), so no broker is needed
and it stays at 0.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fixture_bytes
from tests.deploy._deploy import (
    RULES,
    SCRAPE_SERIES,
    as_promql,
    dashboard,
    dashboard_exprs,
    metric_names,
    rule_exprs,
)
from tests.system._harness import (
    HeldRequest,
    Processes,
    Server,
    free_port,
    post,
    read_token,
    serve,
    stop_gracefully,
    streamd_argv,
    wait_for,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SECRET = "deploy-metrics-secret-0123456789"
PULLED = 30  # events in the emulated Adobe journal


def _scrape(server: Server) -> Samples:
    info = json.loads((server.data_dir / "daemon.json").read_text())
    token = read_token(server.data_dir / "admin-token")
    request = urllib.request.Request(
        info["admin_urls"][0] + "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=15) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _start(processes: Processes, tmp_path: Path) -> Server:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    port = free_port()
    emulator = processes.spawn(
        [
            *streamd_argv(), "emit", "--journal-server", "--listen", f"127.0.0.1:{port}",
            "--seed", "7", "--journal-events", str(PULLED),
            "--client-id", "deploy-client", "--client-secret-file", str(secret),
            "--journal-org-id", "ORG@AdobeOrg",
        ],
        "journal-server",
    )  # fmt: skip
    wait_for(
        lambda: "token endpoint ready" in emulator.stdout(),
        timeout=30,
        what="the journal server",
        context=emulator.stderr,
    )
    config = tmp_path / "streamd.toml"
    config.write_text(
        f"""
[journal]
min_free_disk_mib = 1

[health]
silence_warning = 120
failure_warning_ratio = 0.3

[[sources]]
name = "events"
path = "/events"
max_in_flight = 1

[[sinks]]
name = "out"
kind = "file"
[sinks.file]
directory = "{tmp_path / "out"}"

[[sinks]]
name = "bus"
kind = "kafka"
[sinks.kafka]
bootstrap_servers = ["127.0.0.1:1"]
[[sinks.filters]]
munchkin_ids = ["000-NOT-000"]

[[pulls]]
name = "adobe-journal"
url = "http://127.0.0.1:{port}/journal"
ims_url = "http://127.0.0.1:{port}/ims/token/v3"
org_id = "ORG@AdobeOrg"
client_id = "deploy-client"
client_secret_file = "{secret}"
scope = "AdobeID,openid"
min_wait = 0.2
"""
    )
    return serve(processes, tmp_path / "data", args=["--config", str(config)])


def test_every_metric_the_rules_and_the_dashboard_read_is_exported(
    processes: Processes, tmp_path: Path
) -> None:
    server = _start(processes, tmp_path)
    token = server.token()
    assert post(server.port, fixture_bytes("lads_batch"), token=token).status == 200
    assert post(server.port, fixture_bytes("legacy_push"), token=token).status == 200
    # The source's only slot held: the next delivery is refused for now.
    held = HeldRequest(server.port, token, fixture_bytes("lads_single"))
    try:
        refused = post(server.port, fixture_bytes("lads_single"), token=token)
        assert refused.status == 503, refused
        assert held.finish()[0] == 200
    finally:
        held.close()

    def settled() -> Samples:
        samples = _scrape(server)
        journaled = _value(samples, "streamd_journal_last_seq") or 0
        delivered = _value(samples, "streamd_sink_delivered_events_total", sink="out") or 0
        caught_up = _value(
            samples, "streamd_pull_caught_up_timestamp_seconds", pull="adobe-journal"
        )
        # Everything pushed and pulled is journaled and delivered.
        if caught_up and journaled > PULLED and delivered == journaled:
            return samples
        return {}  # not yet

    samples = wait_for(
        settled,
        timeout=60,
        what="the pull to catch up and the sink to deliver everything",
        context=lambda: server.spawned.stderr()[-2000:],
    )
    exported = {name for name, _ in samples}

    read: dict[str, list[str]] = {}
    for alert, expr in rule_exprs(RULES.read_text()).items():
        for name in metric_names(expr):
            read.setdefault(name, []).append(f"rule {alert}")
    for where, expr in dashboard_exprs(dashboard()).items():
        for name in metric_names(as_promql(expr)):  # label_values(m, l) reads m
            read.setdefault(name, []).append(f"dashboard {where}")
    assert len(read) >= 30, sorted(read)
    missing = {name: where for name, where in read.items() if name not in exported}
    assert set(missing) <= SCRAPE_SERIES, f"not in /metrics: {missing}"

    # The configured thresholds the rules compare with, as configured.
    assert _value(samples, "streamd_source_silence_warning_seconds", source="events") == 120
    assert _value(samples, "streamd_source_failure_warning_ratio", source="events") == 0.3
    assert _value(samples, "streamd_disk_floor_bytes") == 1024 * 1024
    st = os.statvfs(server.data_dir)
    free = _value(samples, "streamd_disk_free_bytes")
    assert free is not None and 0 < free <= st.f_blocks * st.f_frsize
    assert _value(samples, "streamd_unavailable_responses_total", reason="in_flight") == 1
    restarts = "streamd_sink_producer_restarts_total"
    for reason in ("exited", "protocol"):
        assert _value(samples, restarts, sink="bus", reason=reason) == 0
    stop_gracefully(server)
