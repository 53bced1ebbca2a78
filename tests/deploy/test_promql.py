"""The metric-name reader of the deploy/ tests, on the shapes of PromQL that trip a
naive one (functions, label lists, matchers that hold names, numbers, variables)."""

from __future__ import annotations

import pytest

from tests.deploy._deploy import as_promql, metric_names, rule_exprs


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up == 0", {"up"}),
        ("streamd_low_disk == 1", {"streamd_low_disk"}),
        # A function call is not a metric; its argument is.
        ("rate(streamd_requests_total[5m])", {"streamd_requests_total"}),
        ("rate (streamd_requests_total [5m])", {"streamd_requests_total"}),
        # Label lists and matchers hold label names and values, not metrics.
        (
            'sum by (le, source) (rate(streamd_ack_latency_seconds_bucket{source="x"}[5m]))',
            {"streamd_ack_latency_seconds_bucket"},
        ),
        (
            "histogram_quantile(0.99, sum(rate(streamd_commit_seconds_bucket[5m])) by (le))",
            {"streamd_commit_seconds_bucket"},
        ),
        (
            'a_metric > ignoring(munchkin_id) group_left() (b_metric{state=~"on|off"} > 0)',
            {"a_metric", "b_metric"},
        ),
        ("a unless on(instance, job) b > 0 or c", {"a", "b", "c"}),
        ('x{label="not_a_metric", other=~"y_total|z"}', {"x"}),
        # Numbers with letters, durations, offsets, subqueries.
        ("x > 1e3 and y < 0x1F and z offset 5m", {"x", "y", "z"}),
        ("max_over_time(rate(x_total[1m])[30m:1m]) > inf", {"x_total"}),
        ("predict_linear(free_bytes[6h], 86400) < 2 * floor_bytes", {"free_bytes", "floor_bytes"}),
        ("x > bool 1", {"x"}),
        ("time() - caught_up_seconds", {"caught_up_seconds"}),
        ('label_replace(x, "dst", "$1", "src", "(.*)")', {"x"}),
        ("count(x == 1) or vector(0)", {"x"}),
        # Grafana's variables are not names either.
        ('rate(x_total{instance=~"$instance"}[$__rate_interval])', {"x_total"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_name_chosen_by_name_label_is_refused() -> None:
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__="x"}')


def test_grafana_variables_become_promql() -> None:
    assert (
        as_promql('rate(x{instance=~"$instance"}[$__rate_interval]) / ${scale}')
        == 'rate(x{instance=~".*"}[5m]) / .*'
    )
    assert as_promql("label_values(streamd_journal_last_seq, instance)") == (
        "streamd_journal_last_seq"
    )


def test_rule_exprs_reads_plain_quoted_and_folded() -> None:
    text = """groups:
  - name: g
    rules:
      - alert: Plain
        expr: up == 0
        for: 1m
      - alert: Quoted
        expr: "x{a=\\"b\\"} > 1"
      - alert: Folded
        expr: >-
          a
          and on(instance) b

          unless c
        labels:
          severity: warning
"""
    assert rule_exprs(text) == {
        "Plain": "up == 0",
        "Quoted": 'x{a="b"} > 1',
        "Folded": "a and on(instance) b unless c",
    }
