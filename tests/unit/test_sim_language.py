"""The scenario language: parsing, errors that name the line, expectations, the round trip
through `Scenario.to_text` (the swarm prints shrunk schedules that way), and the
`haagent simulate --scenario` entry point."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from haagent.model import FenceMethod, GuestSpec
from haagent.sim.scenario import (
    ScenarioError,
    expectation,
    load_scenario,
    parse_scenario,
    run_scenario,
    scenario_main,
)
from haagent.sim.world import World, default_nodes

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"

FULL = """\
# A description
# on two lines.

seed 9
nodes n1 n2 n3
witness w1
memory n1=2048 n2=1024
fence watchdog n3
watchdog_timeout 4
guest db1 memory=512 priority=3 prefer=n1,n2 allow=n1,n2 group=db
guest web domain=web-vm
set max_start_failures=2 lease_s=1.5
option drop_probability=0.01 keep_guests_on_agent_restart=false
at 2 maintenance n2 on
at 3 fence_script n1 fail/ok,hang
at 4 partition @leader|*
at 4.5 expect running db1
heal_bound 20
run 30
expect running db1 on n1|n2
expect failed_nodes db1 -
expect before "assign guest=db1" "domain_started domain=db1"
"""


def test_parse_everything() -> None:
    sc = parse_scenario(FULL, "full")
    assert sc.description == "A description on two lines."
    assert sc.seed == 9 and sc.nodes == ["n1", "n2", "n3"] and sc.witnesses == ["w1"]
    assert sc.memory == {"n1": 2048, "n2": 1024}
    assert sc.fence == {"n3": FenceMethod.WATCHDOG}
    assert sc.guests[0] == GuestSpec(
        "db1",
        "db1",
        512,
        priority=3,
        preferred_nodes=("n1", "n2"),
        allowed_nodes=("n1", "n2"),
        anti_affinity="db",
    )
    assert sc.guests[1].domain == "web-vm"
    assert sc.settings == {"max_start_failures": 2, "lease_s": 1.5}
    assert sc.options == {"drop_probability": 0.01, "keep_guests_on_agent_restart": False}
    assert [(s.t, s.verb, s.args) for s in sc.faults] == [
        (2.0, "maintenance", ("n2", "on")),
        (3.0, "fence_script", ("n1", "fail/ok,hang")),
        (4.0, "partition", ("@leader|*",)),
    ]
    assert [(s.t, s.args) for s in sc.checks] == [(4.5, ("running", "db1"))]
    assert sc.end_s == 30.0 and sc.heal_bound_s == 20.0
    node_settings = sc.node_settings()
    assert node_settings["n3"].fence_method is FenceMethod.WATCHDOG
    assert node_settings["n1"].watchdog_timeout_s == 4.0


def test_round_trip_through_text() -> None:
    sc = parse_scenario(FULL, "full")
    text = sc.to_text()
    again = parse_scenario(text, "full")
    assert again.to_text() == text
    assert again.guests == sc.guests and again.options == sc.options
    for path in sorted(SCENARIO_DIR.glob("*.scn")):
        original = load_scenario(path)
        assert parse_scenario(original.to_text(), path.stem).to_text() == original.to_text()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("at 5 explode n1", "unknown fault 'explode'"),
        ("at 5 power_off n9", "unknown node 'n9'"),
        ("at 5 crash g9", "unknown guest 'g9'"),
        ("at 5 fence_script n1 fail,boom", "bad fence attempt 'boom'"),
        ("at 5 maintenance n1 maybe", "maintenance takes on|off"),
        ("at x power_off n1", "expected a number"),
        ("at 5 power_off", "power_off takes 1..1 arguments"),
        ("guest g2 colour=red", "unknown guest attribute 'colour'"),
        ("set no_such_setting=1", "unknown set 'no_such_setting'"),
        ("option no_such_option=1", "unknown option 'no_such_option'"),
        ("expect sideways g1", "unknown expectation"),
        ("expect running g1 at n1", "expect running G [on A|B]"),
        ("frobnicate", "unknown statement 'frobnicate'"),
        ("fence watchdog n1\noption hardware_watchdog=false", "needs option hardware_watchdog"),
    ],
)
def test_errors_name_the_line(line: str, message: str) -> None:
    text = f"nodes n1 n2 n3\nguest g1\n{line}\n"
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad")
    assert message in str(info.value)
    assert str(info.value).startswith("bad")


def test_no_nodes_is_an_error() -> None:
    with pytest.raises(ScenarioError, match="no `nodes` line"):
        parse_scenario("guest g1\n", "empty")


def test_expectations_report_what_is_wrong() -> None:
    sc = parse_scenario("nodes n1 n2 n3\nguest g1 prefer=n1\nrun 3\n")
    result = run_scenario(sc)
    world = result.world
    assert expectation(world, ["running", "g1", "on", "n1"]) == ""
    assert "runs on ['n1']" in expectation(world, ["running", "g1", "on", "n2|n3"])
    assert expectation(world, ["stopped", "g1"]).startswith("expected g1 stopped")
    assert expectation(world, ["state", "g1", "running"]) == ""
    assert expectation(world, ["owner", "g1", "n1"]) == ""
    assert expectation(world, ["generation", "g1", "2"]) == ""  # assigned 1, started 2
    assert expectation(world, ["desired", "g1", "running"]) == ""
    assert expectation(world, ["failed_nodes", "g1", "-"]) == ""
    assert expectation(world, ["node", "n2", "up"]) == ""
    assert expectation(world, ["maintenance", "n1", "off"]) == ""
    assert expectation(world, ["powered", "n1"]) == ""
    assert expectation(world, ["event", "domain_started", "at=n1", "generation=2"]) == ""
    assert expectation(world, ["no_event", "fence_device"]) == ""
    assert "found 1" in expectation(world, ["events", "2", "domain_started"])
    assert expectation(world, ["before", "assign guest=g1", "domain_started domain=g1"]) == ""
    assert "before" in expectation(world, ["before", "domain_started", "assign"])
    assert "not registered" in expectation(world, ["state", "nope", "running"])


def test_leader_alias_and_rest_of_partition() -> None:
    sc = parse_scenario(
        "nodes n1 n2 n3 n4 n5\nguest g1\nat 3 partition @leader,n5|*\nrun 4\n", "alias"
    )
    result = run_scenario(sc)
    (fault,) = [e for e in result.world.trace if e.name == "fault_partition"]
    groups = dict(fault.data)["groups"]
    assert isinstance(groups, str)
    left, right = groups.split("|")
    assert "@" not in groups and "*" not in groups
    assert len(left.split(",")) == 2 and len(right.split(",")) == 3
    assert "n5" in left.split(",")


def test_world_refuses_watchdog_fencing_without_a_watchdog() -> None:
    from haagent.sim.world import SimOptions

    with pytest.raises(ValueError, match="needs hardware_watchdog"):
        World(
            1,
            default_nodes(["n1", "n2", "n3"], fence=FenceMethod.WATCHDOG),
            [],
            options=SimOptions(hardware_watchdog=False),
        )


def test_scenario_main(tmp_path: Path) -> None:
    path = SCENARIO_DIR / "owner_power_loss.scn"
    out = io.StringIO()
    assert scenario_main(["--scenario", str(path)], out) == 0
    assert "ok:" in out.getvalue() and "owner_power_loss (seed 1)" in out.getvalue()
    out = io.StringIO()
    assert scenario_main(["--scenario", str(path), "--seed", "4", "--trace"], out) == 0
    first = out.getvalue().splitlines()[0]
    assert json.loads(first)["t"] >= 0
    failing = tmp_path / "failing.scn"
    failing.write_text("# Wrong on purpose.\nnodes n1 n2 n3\nguest g1\nexpect stopped g1\n")
    out = io.StringIO()
    assert scenario_main(["--scenario", str(failing)], out) == 1
    assert "expectation failed: failing:4" in out.getvalue()
    bad = tmp_path / "bad.scn"
    bad.write_text("nodes n1\nat 1 fly n1\n")
    assert scenario_main(["--scenario", str(bad)], io.StringIO()) == 2
    assert scenario_main(["--scenario", str(tmp_path / "missing.scn")], io.StringIO()) == 2


def test_python_m_haagent_sim_dispatches() -> None:
    from haagent.sim.__main__ import main

    path = str(SCENARIO_DIR / "guest_crash.scn")
    assert main(["--scenario", path]) == 0
    assert main(["--swarm", "--seeds", "1", "--start", "3"]) == 0
    assert main([]) == 2
