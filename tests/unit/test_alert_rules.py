"""The shipped Prometheus alert rules and Grafana dashboard (issue 12), checked with promtool.

- `promtool check rules` and `promtool test rules` pass on config/prometheus/;
- every alert is tested both firing and not firing, and has a severity, a summary, a
  description and a runbook section in the README that its `runbook_url` points to;
- every PromQL expression of the dashboard parses (promtool checks them as recording rules);
- every haagent metric an alert or a panel names is one the agent really exports (the names
  come from a real exposition, see tests/helpers/metrics_state.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.metrics_state import exported_names, exposition, promtool, synthetic_state

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "config" / "prometheus"
RULES = PROMETHEUS / "haagent.rules.yml"
RULE_TESTS = PROMETHEUS / "haagent.rules.test.yml"
DASHBOARD = ROOT / "config" / "grafana" / "haagent.json"
METRIC = re.compile(r"\bhaagent_[a-z0-9_]+")
# Grafana's built-in interval variables, as a concrete duration promtool can parse.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard, nested rows included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_names(exposition(synthetic_state(5, 10))) | {"up"}


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name, cwd=PROMETHEUS)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


def test_every_alert_has_severity_summary_description_and_a_readme_runbook() -> None:
    readme = (ROOT / "README.md").read_text()
    headings = {h.strip() for h in re.findall(r"^#### (\S+)\s*$", readme, re.MULTILINE)}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), name
        assert notes["runbook_url"] == f"README.md#{name.lower()}", name
        assert name in headings, f"README has no '#### {name}' runbook section"


def test_alerts_name_only_metrics_the_agent_exports(exported: set[str]) -> None:
    for rule in alert_rules():
        unknown = set(METRIC.findall(rule["expr"])) - exported
        assert not unknown, f"{rule['alert']}: {unknown}"


def test_every_dashboard_query_parses_and_names_exported_metrics(
    tmp_path: Path, exported: set[str]
) -> None:
    queries = dashboard_exprs()
    assert len(queries) >= 20
    rules = []
    for i, (title, query) in enumerate(queries):
        expr = query
        for variable, duration in GRAFANA_INTERVALS.items():
            expr = expr.replace(variable, duration)
        assert "$" not in expr, f"{title}: unknown variable in {expr}"
        unknown = set(METRIC.findall(expr)) - exported
        assert not unknown, f"{title}: {unknown}"
        rules.append({"record": f"haagent_dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path))


def test_dashboard_covers_the_overview_guests_failovers_fences_and_loop() -> None:
    doc = json.loads(DASHBOARD.read_text())
    rows = {p["title"] for p in doc["panels"] if p["type"] == "row"}
    assert rows == {"Cluster overview", "Guests", "Failovers and fences", "Loop health"}
    text = " ".join(expr for _, expr in dashboard_exprs())
    for metric in (
        "haagent_raft_leader",
        "haagent_lease_remaining_seconds",
        "haagent_node_guests",
        "haagent_failover_duration_seconds_bucket",
        "haagent_fence_operations_total",
        "haagent_loop_lag_seconds",
    ):
        assert metric in text, metric
