"""What the tests of deploy/ share: the files, ``promtool``, the alert rules' expressions
and the metric names a PromQL expression reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "streamd-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "streamd-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "streamd.json"
INSTALL_HINT = (
    "apt-get install prometheus (Debian's package has promtool); make test does it as root"
)

# Series that Prometheus makes itself for each scrape, not streamd.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def promtool() -> str:
    """The path of ``promtool``; skips the test without it, and fails it under CI."""
    path = shutil.which("promtool")
    if path is None:
        reason = f"promtool is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool (bounded) and return what it did."""
    return subprocess.run(
        [promtool(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


# -- the rules ----------------------------------------------------------------------

_ALERT = re.compile(r"^\s*- alert:\s*(\S+)\s*$")
_EXPR = re.compile(r"^(\s*)expr:\s*(.*?)\s*$")


def _expr_lines(lines: list[str]) -> list[tuple[str, list[int]]]:
    """(alert, indexes of the lines its ``expr`` spans) for each alert."""
    out = []
    alert = None
    i = 0
    while i < len(lines):
        if m := _ALERT.match(lines[i]):
            alert = m.group(1)
        elif (m := _EXPR.match(lines[i])) and alert is not None:
            indent, span = len(m.group(1)), [i]
            if m.group(2) in (">", ">-", "|", "|-"):
                while i + 1 < len(lines) and (
                    not lines[i + 1].strip()
                    or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
                ):
                    i += 1
                    span.append(i)
            out.append((alert, span))
            alert = None
        i += 1
    return out


def rename_metric(text: str, old: str, new: str) -> str:
    """``text`` (a rules file) with metric ``old`` called ``new`` in every ``expr``
    (and nowhere else: the annotations the unit tests compare stay as they are)."""
    lines = text.splitlines(keepends=True)
    pattern = re.compile(rf"(?<![\w:$]){re.escape(old)}(?![\w:])(?!\s*\()")
    for _, span in _expr_lines(lines):
        for i in span:
            lines[i] = pattern.sub(new, lines[i])
    return "".join(lines)


def rule_exprs(text: str) -> dict[str, str]:
    """Each alert's ``expr`` in a rules file written as deploy/'s is (a plain or quoted
    scalar on the line, or a ``>-`` folded block): alert name -> expression.

    No YAML library is needed for that one shape; the tests check that this finds as
    many rules as ``promtool check rules`` does, so a rule written otherwise fails them.
    """
    lines = text.splitlines()
    out = {}
    for alert, span in _expr_lines(lines):
        value = lines[span[0]].split("expr:", 1)[1].strip()
        if len(span) > 1 or value in (">", ">-", "|", "|-"):
            value = " ".join(lines[i].strip() for i in span[1:] if lines[i].strip())
        elif value[:1] == '"':
            value = json.loads(value)
        elif value[:1] == "'":
            value = value[1:-1].replace("''", "'")
        out[alert] = value
    return out


# -- the dashboard ------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(board: dict[str, Any]) -> dict[str, str]:
    """Each query of the dashboard (panel targets and variable queries): where -> expr."""
    out = {}
    for panel in panels(board):
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} target {target['refId']}"] = target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out[f"variable {variable['name']}"] = (
                query["query"] if isinstance(query, dict) else query
            )
    return out


_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values, so that promtool can
    parse it (``label_values(metric, label)``, a Grafana function, becomes ``metric``)."""
    if m := re.fullmatch(r"label_values\((.+),\s*\w+\)", expr.strip()):
        expr = m.group(1)
    for name, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


# -- metric names in PromQL ---------------------------------------------------------

# Words of PromQL that look like identifiers but are not metric names.
_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
        "group_right", "offset", "bool", "inf", "nan", "atan2", "start", "end",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# An identifier that is not part of a number or a variable, and is not a function call.
_IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads.

    Strings, label matchers ``{...}``, label lists of ``by``/``without``/``on``/
    ``ignoring``/``group_left``/``group_right``, ranges and subqueries ``[...]`` are
    removed first; what is left of the identifiers, less the ones followed by ``(``
    (functions and aggregations) and PromQL's keywords, are metric names.
    """
    if "__name__" in expr:
        raise ValueError(f"{expr!r}: a metric chosen by __name__ is not supported here")
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub(" ", s)
    s = _LABEL_LIST.sub(" ", s)
    s = _RANGE.sub(" ", s)
    return {name for name in _IDENTIFIER.findall(s) if name.lower() not in _KEYWORDS}
