"""Every simulator scenario under tests/scenarios: no invariant violation, every `expect` line
holds, and the structured trace equals the recorded one (tests/scenarios/NAME.trace).

After an intended change of behaviour, regenerate the traces and review their diff:

    pytest tests/unit/test_sim_scenarios.py --regen-traces     (or HAAGENT_REGEN_TRACES=1)
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from haagent.sim.scenario import load_scenario, run_scenario

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
SCENARIOS = sorted(SCENARIO_DIR.glob("*.scn"))
DIFF_LINES = 60

# The situations the issue asks a scenario for, each with the file that covers it.
REQUIRED = {
    "owner power loss": "owner_power_loss",
    "no fence for a silence nobody could break": "deaf_leader_no_false_fence",
    "liveness means progress": "stuck_replica_declared_failed",
    "owner network isolation": "owner_network_isolation",
    "total network loss": "total_network_loss",
    "cold start without quorum": "cold_start_without_quorum",
    "failed node returning before recovery": "failed_node_returns_before_recovery",
    "failed node returning after recovery": "failed_node_returns_after_recovery",
    "leader lost while a fence is pending": "leader_lost_while_fence_pending",
    "rejoin while a fence is in progress": "rejoin_while_fence_pending",
    "two fences in flight after a leader change": "two_fences_after_leader_change",
    "a fence outliving the new leader's failed retry": "fence_outlives_failed_retry",
    "fence failing then succeeding": "fence_fails_then_succeeds",
    "fencing levels": "fencing_levels",
    "repeated failures: restart, relocate, error": "guest_crash_loop_error",
    "start failures: relocate, error": "start_failure_relocates",
    "no capacity left on survivors": "no_capacity_on_survivors",
    "priority order": "priority_order",
    "anti-affinity": "anti_affinity",
    "two nodes plus a witness": "two_nodes_witness",
    "agent restart that must not fence": "agent_restart_no_fence",
    "maintenance mode": "maintenance_mode",
    "hung agent, hardware watchdog": "hung_agent_hardware_watchdog",
    "hung agent, no hardware watchdog": "hung_agent_no_watchdog",
    "flapping node": "flapping_node",
    "one-way drop": "one_way_drop",
    "partition n1,n2|n3": "partition_minority",
    "clock jump": "clock_jump",
    "guest crash": "guest_crash",
    "admin disable/enable": "admin_disable_enable",
    "watchdog fencing": "watchdog_fencing",
    "agent restart that loses its guests": "agent_restart_loses_guests",
    "message loss": "message_loss",
    "5 nodes, two failures": "five_nodes_two_failures",
}


def regen_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("--regen-traces")) or os.environ.get("HAAGENT_REGEN_TRACES") == "1"


def trace_diff(expected: str, actual: str, name: str) -> str:
    """The first differences as a unified diff, with a hint on how to accept them."""
    lines = list(
        difflib.unified_diff(
            expected.splitlines(),
            actual.splitlines(),
            f"{name}.trace (recorded)",
            f"{name} (this run)",
            n=2,
            lineterm="",
        )
    )
    shown = lines[:DIFF_LINES]
    if len(lines) > DIFF_LINES:
        shown.append(f"... {len(lines) - DIFF_LINES} more diff lines")
    return (
        f"trace of scenario {name} differs from the recorded one:\n"
        + "\n".join(shown)
        + "\nIf the change is intended: pytest tests/unit/test_sim_scenarios.py --regen-traces"
    )


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    scenario = load_scenario(path)
    assert scenario.description, f"{path.name}: start with a comment saying what it checks and why"
    result = run_scenario(scenario)
    assert not result.violations, result.checker.report()
    assert not result.failed_expectations, "\n".join(result.failed_expectations)
    actual = result.trace_text()
    trace_path = path.with_suffix(".trace")
    if regen_requested(request.config):
        trace_path.write_text(actual)
        return
    if not trace_path.exists():
        pytest.fail(f"{trace_path} is missing: run pytest with --regen-traces and review it")
    expected = trace_path.read_text()
    if actual != expected:
        pytest.fail(trace_diff(expected, actual, path.stem), pytrace=False)


def test_the_suite_covers_the_issue() -> None:
    names = {p.stem for p in SCENARIOS}
    assert len(names) >= 30
    missing = {what: name for what, name in REQUIRED.items() if name not in names}
    assert not missing
    traces = {p.stem for p in SCENARIO_DIR.glob("*.trace")}
    assert traces <= names, f"traces without a scenario: {sorted(traces - names)}"


def test_trace_diff_is_readable() -> None:
    expected = "".join(f'{{"event": "e{i}", "t": {i}}}\n' for i in range(200))
    actual = expected.replace('"e5"', '"changed"')
    text = trace_diff(expected, actual, "demo")
    assert '-{"event": "e5", "t": 5}' in text
    assert '+{"event": "changed", "t": 5}' in text
    assert "--regen-traces" in text
    assert len(text.splitlines()) < DIFF_LINES + 5
