"""deploy/prometheus: the alert rules pass ``promtool check rules``, their unit tests pass
``promtool test rules``, every alert has a case that fires, and renaming any metric the
rules read makes those unit tests fail (so they cannot pass against metrics that are
not there)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.deploy._deploy import (
    RULE_TESTS,
    RULES,
    metric_names,
    rename_metric,
    rule_exprs,
    run_promtool,
)

RULES_TEXT = RULES.read_text()
EXPRS = rule_exprs(RULES_TEXT)
MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"


def test_promtool_checks_the_rules() -> None:
    done = run_promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", done.stdout)
    assert found is not None, done.stdout
    # The expressions the other tests read are all there is (see rule_exprs).
    assert int(found.group(1)) == len(EXPRS) >= 15


def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _alerts_tested() -> tuple[set[str], set[str]]:
    """Alerts with an expected firing, and alerts with an evaluation that expects none."""
    firing, quiet = set(), set()
    lines = RULE_TESTS.read_text().splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\s*alertname:\s*(\S+)", line):
            following = lines[i + 1].strip()
            if following == "exp_alerts: []":
                quiet.add(m.group(1))
            elif following == "exp_alerts:" and lines[i + 2].strip().startswith("- exp_labels:"):
                firing.add(m.group(1))
    return firing, quiet


def test_every_alert_has_a_firing_case() -> None:
    firing, _ = _alerts_tested()
    assert firing == set(EXPRS)


def test_most_alerts_have_an_evaluation_where_nothing_fires() -> None:
    # Not-firing cases also sit beside the firing ones: promtool fails when an alert
    # fires that the test does not list, so the quiet series of a firing case count too.
    _, quiet = _alerts_tested()
    assert len(quiet) >= len(EXPRS) - 2, sorted(set(EXPRS) - quiet)


@pytest.mark.parametrize("alert", sorted(EXPRS))
def test_each_alert_says_how_bad_and_what_to_do(alert: str) -> None:
    block = RULES_TEXT.split(f"- alert: {alert}\n", 1)[1].split("- alert:", 1)[0]
    assert re.search(r"^\s+severity: (warning|critical)$", block, re.MULTILINE), block
    assert re.search(r"^\s+summary: ", block, re.MULTILINE), block
    assert re.search(r"^\s+description: ", block, re.MULTILINE), block
    assert f"runbook: docs/monitoring.md#{alert.lower()}\n" in block
    # ... and the runbook entry exists.
    assert f"\n### {alert}\n" in MONITORING.read_text()


def _groups() -> tuple[str, dict[str, str]]:
    """The unit-test file's head (up to ``tests:``) and its test groups by name."""
    text = RULE_TESTS.read_text()
    head, _, body = text.partition("\ntests:\n")
    groups = {}
    for chunk in re.split(r"\n(?=  - name: )", "\n" + body):
        if m := re.match(r"  - name: (\S+)\n", chunk):
            groups[m.group(1)] = chunk.rstrip("\n") + "\n"
    return head + "\ntests:\n", groups


def test_each_alert_has_its_own_test_group() -> None:
    _, groups = _groups()
    assert sorted(groups) == sorted(EXPRS)


def _run_group(tmp_path: Path, alert: str, rules: str) -> str | None:
    """Run the test group of ``alert`` against ``rules`` (in a copy of
    deploy/prometheus); None when it passes, else what promtool said."""
    head, groups = _groups()
    root = tmp_path / "prometheus"
    shutil.copytree(RULES.parent, root)
    (root / RULES.name).write_text(rules)
    test_file = root / RULE_TESTS.relative_to(RULES.parent)
    test_file.write_text(head + groups[alert])
    done = run_promtool("test", "rules", str(test_file))
    if done.returncode == 0:
        return None
    return done.stdout + done.stderr


@pytest.mark.parametrize("alert", sorted(EXPRS))
def test_each_group_passes_alone(tmp_path: Path, alert: str) -> None:
    """The control of the next test: a group run on its own, against the rules as they
    are, passes."""
    failure = _run_group(tmp_path, alert, RULES_TEXT)
    assert failure is None, failure


PAIRS = [
    (alert, metric)
    for alert, expr in sorted(EXPRS.items())
    for metric in sorted(metric_names(expr))
]


@pytest.mark.parametrize(("alert", "metric"), PAIRS)
def test_renaming_a_metric_fails_the_alerts_tests(tmp_path: Path, alert: str, metric: str) -> None:
    """Each alert's test fails when any metric its expression reads is renamed: the test
    series exercise every part of the expression, and a rule cannot pass its tests
    while it names a metric that the series (the names streamd exports) do not have."""
    renamed = rename_metric(RULES_TEXT, metric, metric + "_renamed")
    assert metric + "_renamed" in rule_exprs(renamed)[alert]
    failure = _run_group(tmp_path, alert, renamed)
    assert failure is not None, f"{alert}'s tests pass with {metric} renamed"
    assert "FAILED" in failure


def test_renaming_a_metric_fails_the_whole_unit_test_file(tmp_path: Path) -> None:
    """The shipped test file as it is, run as an operator would run it, against rules in
    which one metric is misspelt (``streamd_sink_lag_seconds``, read by one alert)."""
    root = tmp_path / "prometheus"
    shutil.copytree(RULES.parent, root)
    test_file = root / RULE_TESTS.relative_to(RULES.parent)
    assert run_promtool("test", "rules", str(test_file)).returncode == 0  # the control
    (root / RULES.name).write_text(
        rename_metric(RULES_TEXT, "streamd_sink_lag_seconds", "streamd_sink_lag_secs")
    )
    done = run_promtool("test", "rules", str(test_file))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "alertname: StreamdSinkLagging" in done.stdout + done.stderr
