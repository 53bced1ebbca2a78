"""deploy/grafana/streamd.json: a dashboard Grafana can import anywhere (its data source
is a variable, no data source UID is written in it) whose every query is valid PromQL
(promtool parses each as a recording rule) and shows what the operator needs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.deploy._deploy import (
    as_promql,
    dashboard,
    dashboard_exprs,
    metric_names,
    panels,
    run_promtool,
)

BOARD = dashboard()
EXPRS = dashboard_exprs(BOARD)
VARIABLE_SOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, value) of a JSON document."""
    out = [(path, node)]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_walk(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.extend(_walk(value, f"{path}/{index}"))
    return out


def test_the_data_source_is_a_variable() -> None:
    variables = {v["name"]: v for v in BOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # Every data source reference is the variable; the only UID is the dashboard's own.
    sources = [v for p, v in _walk(BOARD) if p.endswith("/datasource")]
    assert sources and all(s == VARIABLE_SOURCE for s in sources), sources
    uids = [(p, v) for p, v in _walk(BOARD) if p.endswith("/uid")]
    assert all(v == "${datasource}" for p, v in uids if p != "/uid"), uids
    assert "__inputs" not in BOARD and "DS_" not in json.dumps(BOARD)


def test_every_query_has_a_data_source_and_every_panel_an_id() -> None:
    ids = [p["id"] for p in panels(BOARD)]
    assert len(ids) == len(set(ids))
    for panel in panels(BOARD):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} says nothing about itself"
        for target in panel["targets"]:
            assert target["datasource"] == VARIABLE_SOURCE


def test_the_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels(BOARD):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells


def test_only_defined_variables_are_used() -> None:
    defined = {v["name"] for v in BOARD["templating"]["list"]} | GRAFANA_BUILTINS
    used = {m for expr in EXPRS.values() for m in re.findall(r"\$\{?(\w+)", expr)}
    assert used <= defined, used - defined
    # Each panel query filters on the instance variable.
    for where, expr in EXPRS.items():
        if where.startswith("panel"):
            for metric in metric_names(expr):
                assert re.search(re.escape(metric) + r'\{[^}]*instance=~"\$instance"', expr), (
                    f"{where}: {metric} is not filtered by $instance"
                )


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
                    for i, expr in enumerate(EXPRS.values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(rules, indent=1))  # JSON is YAML
    done = run_promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(EXPRS)} rules found" in done.stdout


def test_it_shows_what_the_issue_asks_for() -> None:
    joined = "\n".join(EXPRS.values())
    for needed in (
        r"sum by \(source, status\) \(rate\(streamd_requests_total",  # ingest by status
        r"sum by \(source, stream\) \(rate\(streamd_events_journaled_total",  # by stream
        r"histogram_quantile\(0\.99, sum by \(le, source\) \(rate\("
        r"streamd_ack_latency_seconds_bucket",
        r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(streamd_commit_seconds_bucket",
        r"streamd_sink_lag_events",
        r"streamd_sink_lag_seconds",
        r"streamd_journal_file_bytes",
    ):
        assert re.search(needed, joined), needed
