"""The shipped alerts end to end (issue 12): a real Prometheus scrapes a real 3-node local
cluster with config/prometheus/haagent.rules.yml, a node's agent is SIGKILLed (a power loss
of its hypervisor), and the failover alert `HaagentNodeFailed` reaches a real Alertmanager,
which delivers it to a webhook in this test.

Bounded: scrape and rule evaluation every 500 ms, Alertmanager groups with no wait, and every
wait has a deadline. Everything binds 127.0.0.1 on free ports under tmp_path; Prometheus,
Alertmanager, the webhook and the agents are stopped even when the test fails.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from haagent.localcluster.cluster import LocalCluster, local_plan, wait_for
from tests.helpers.prom_stack import PromStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "haagent.rules.yml"
READY_TIMEOUT_S = 60.0
ALERT_TIMEOUT_S = 60.0


def test_a_killed_node_reaches_alertmanager_and_the_webhook(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(local_plan(3, fence="dummy"))
    targets = [cluster.api_listen(n) for n in cluster.nodes()]
    with PromStack(tmp_path / "monitoring", targets, RULES) as stack:
        stack.start()

        def every_agent_scraped_with_a_lease() -> bool | None:
            stack.check_alive()
            holding = stack.query('haagent_raft_quorum{job="haagent"} == 1')
            return True if len(holding) == 3 else None

        wait_for(
            "Prometheus scraping 3 agents with a lease",
            every_agent_scraped_with_a_lease,
            READY_TIMEOUT_S,
            0.2,
        )
        # Not firing while the cluster is healthy: two evaluations of the rule after every
        # agent was scraped (the first may have begun before), both inactive.
        seen: set[str] = set()

        def evaluated_twice_since() -> bool | None:
            rule = stack.rule("HaagentNodeFailed")
            if rule is None or rule["health"] == "unknown":
                return None  # not loaded or not evaluated yet
            assert rule["health"] == "ok" and rule["state"] == "inactive", rule
            seen.add(rule["lastEvaluation"])
            return True if len(seen) >= 3 else None

        wait_for("two evaluations of the rules", evaluated_twice_since, READY_TIMEOUT_S, 0.2)
        delivered = [a["labels"]["alertname"] for a in stack.webhook.alerts()]
        assert "HaagentNodeFailed" not in delivered

        # The series the dashboard and the alerts read come from the real agents (waited
        # for: a scrape that timed out on this busy machine leaves a gap, not a failure).
        for expr, count in (
            ("haagent_build_info == 1", 3),
            ("count by (digest) (haagent_config_info)", 1),  # one config digest
            ('haagent_proposals_total{command="heartbeat",outcome="accepted"} > 0', 3),
            ("haagent_watchdog_pet_age_seconds < 5", 3),
            ('haagent_node_guests{state="running"} == 1', 3),
        ):
            wait_for(
                f"{count} series of {expr}",
                lambda e=expr, c=count: True if len(stack.query(e)) == c else None,
                READY_TIMEOUT_S,
                0.2,
            )

        victim = cluster.any_status()["guests"]["g1"]["owner"]
        t_kill = time.monotonic()
        cluster.signal_agent(victim, signal.SIGKILL)
        alert = stack.webhook.wait_for("HaagentNodeFailed", ALERT_TIMEOUT_S)
        took = time.monotonic() - t_kill
        print(f"\nHaagentNodeFailed for {victim} reached the webhook {took:.2f}s after the kill")
        assert alert["labels"]["node"] == victim
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"] == f"haagent node {victim} failed"
        assert alert["annotations"]["runbook_url"] == "README.md#haagentnodefailed"
        # Only the killed node: the survivors are not reported failed.
        failed = {
            a["labels"]["node"]
            for a in stack.webhook.alerts()
            if a["labels"]["alertname"] == "HaagentNodeFailed"
        }
        assert failed == {victim}
        # The failover and the fence behind it show up in the dashboard's series.
        for expr in (
            'sum(haagent_fence_duration_seconds_count{result="ok"}) >= 1',
            "sum(haagent_failover_duration_seconds_count) >= 1",
            f'max(haagent_node_state{{node="{victim}",state="fenced"}}) == 1',
        ):
            wait_for(expr, lambda e=expr: stack.query(e) or None, ALERT_TIMEOUT_S, 0.2)
