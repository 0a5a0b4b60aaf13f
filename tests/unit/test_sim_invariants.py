"""The simulator's invariants can fail: deliberately broken cores are caught, and the report
names the seed and a shortened trace that reproduces the violation. Same seed, same trace.

The mutations patch the real core (`haagent.statemachine.movable`, `GuestReconciler._destroy`) for
one test only; the simulator imports that code, so it runs the mutant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from haagent import placement, statemachine
from haagent.agent import LocalView
from haagent.core import scheduling
from haagent.core.drbd import DrbdStorage
from haagent.core.guests import GuestReconciler
from haagent.core.storage import StartBlocked
from haagent.model import ClusterState, GuestRecord
from haagent.sim.invariants import InvariantChecker, shorten_trace
from haagent.sim.scenario import parse_scenario, run_scenario
from haagent.sim.world import World, default_nodes

HUNG_OWNER = """\
# The owner hangs on a host without a hardware watchdog, and fencing fails.
nodes n1 n2 n3
guest g1 prefer=n1
option hardware_watchdog=false
at 4 fence_script n1 fail,fail,fail,fail,fail
at 5 hang n1
at 12 resume n1
"""

ISOLATED_OWNER = """\
# The owner is cut off, and fencing fails.
nodes n1 n2 n3
guest g1 prefer=n1
at 4 fence_script n1 fail,fail,fail,fail,fail
at 5 cut n1
at 12 heal n1
"""


def always_movable(state: ClusterState, guest: GuestRecord) -> bool:
    return True


def test_the_unbroken_core_passes_these_scenarios() -> None:
    for text in (HUNG_OWNER, ISOLATED_OWNER):
        result = run_scenario(parse_scenario(text))
        assert not result.violations, result.checker.report()


def test_moving_guests_of_an_unfenced_node_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: rule 4 removed (a failed, unfenced owner's guests count as movable)."""
    monkeypatch.setattr(statemachine, "movable", always_movable)
    monkeypatch.setattr(placement, "movable", always_movable)
    sc = parse_scenario(HUNG_OWNER, "hung_owner")
    result = run_scenario(sc)
    text = "\n".join(result.violations)
    assert "without a committed fence" in text
    assert "two running copies of g1: n1, n2" in text or "two running copies of g1: n1, n3" in text
    report = result.checker.report()
    assert f"seed {sc.seed}:" in report
    assert all(f"seed={sc.seed}" in v for v in result.violations)
    # The shortened trace keeps every fault and the events just before the first violation.
    assert '"event": "fault_hang"' in report
    assert '"event": "fault_fence_script"' in report
    trace_lines = [line for line in report.splitlines() if line.startswith("  {")]
    assert 0 < len(trace_lines) < len(result.world.trace)
    last = json.loads(trace_lines[-1])
    assert result.checker.first_violation_t is not None
    assert last["t"] <= round(result.checker.first_violation_t, 3)
    # ... and replaying the scenario with that seed reproduces the same violations.
    again = run_scenario(parse_scenario(HUNG_OWNER, "hung_owner"))
    assert again.violations == result.violations


def test_running_without_a_lease_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: rule 3 removed (an agent never destroys a domain, even without a lease)."""

    def no_destroy(self: GuestReconciler, *args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(GuestReconciler, "_destroy", no_destroy)
    result = run_scenario(parse_scenario(ISOLATED_OWNER))
    assert any("n1 runs a protected guest" in v and "lease ended" in v for v in result.violations)


def test_a_start_without_committed_ownership_is_caught() -> None:
    """A domain started behind the cluster's back (no committed guest_starting) is flagged."""
    world = World(3, default_nodes(["n1", "n2", "n3"]), [])
    checker = InvariantChecker(world)
    world.run_until(1.0)
    world.record("n2", "domain_started", domain="rogue", generation=7)
    world.run_until(1.1)
    assert any("without a committed guest_starting" in v for v in checker.violations)


def test_same_seed_same_trace_byte_for_byte() -> None:
    sc = parse_scenario(HUNG_OWNER)
    first = run_scenario(sc).trace_text()
    second = run_scenario(parse_scenario(HUNG_OWNER)).trace_text()
    assert first == second
    other = run_scenario(sc, seed=sc.seed + 1).trace_text()
    assert other != first  # the seed does matter (timings, leader, clocks)


def test_shorten_trace_keeps_faults_and_the_tail() -> None:
    world = World(1, default_nodes(["n1", "n2", "n3"]), [])
    world.run_until(2.0)
    world.cut("n1")
    world.run_until(4.0)
    lines = shorten_trace(world.trace, keep_last=3)
    assert any('"fault_cut"' in line for line in lines)
    assert sum(1 for line in lines if line.startswith("{")) == 4
    assert any(line.startswith("... ") for line in lines)


def test_check_healed_needs_the_bound_to_have_passed() -> None:
    world = World(1, default_nodes(["n1", "n2", "n3"]), [])
    checker = InvariantChecker(world)
    world.run_until(1.0)
    with pytest.raises(ValueError):
        checker.check_healed(0.5, 30.0)


def test_same_trace_in_another_process_with_another_hash_seed() -> None:
    """Nothing depends on set or dict-of-str iteration order (PYTHONHASHSEED)."""
    code = (
        "import sys\n"
        "from haagent.sim.scenario import parse_scenario, run_scenario\n"
        "sys.stdout.write(run_scenario(parse_scenario(sys.stdin.read())).trace_text())\n"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=ISOLATED_OWNER,
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=120,
        )
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0] == run_scenario(parse_scenario(ISOLATED_OWNER)).trace_text()


OUTDATED_PEER = """\
# The DRBD link n1 <-> n2 breaks; n1 marks n2 outdated and writes on; then n1 loses power.
nodes n1 n2 n3
guest db drbd=n1,n2 prefer=n1
at 5 drop n1 n2
at 7 power_on n2
at 12 power_off n1
at 20 heal
at 20 power_on n1
"""


def test_promoting_an_outdated_replica_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: rule 5 removed (the leader places on outdated replicas and the host promotes
    whatever it has). The checker must see a replica promoted with less data than the newest."""
    original = placement.plan

    def ignore_outdated(state: ClusterState, *args: object, **kw: object) -> placement.Plan:
        guests = {n: replace(g, outdated_nodes=()) for n, g in state.guests.items()}
        return original(replace(state, guests=guests), *args, **kw)  # type: ignore[arg-type]

    def promote_anyway(
        self: DrbdStorage, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> StartBlocked | None:
        return None  # every replica may be promoted, whatever it holds

    monkeypatch.setattr(placement, "plan", ignore_outdated)
    monkeypatch.setattr(scheduling, "plan", ignore_outdated)
    monkeypatch.setattr(DrbdStorage, "may_start", promote_anyway)
    result = run_scenario(parse_scenario(OUTDATED_PEER, "outdated_peer"))
    assert any("started from stale data" in v for v in result.violations), result.violations
    # And the unbroken core is fine with the same schedule.
    monkeypatch.undo()
    assert not run_scenario(parse_scenario(OUTDATED_PEER, "outdated_peer")).violations


LIVE_MIGRATION = """\
nodes n1 n2 n3
migration_uri n1 n2 n3
guest g1 prefer=n1
at 5 migrate g1 n2
"""


def test_a_resume_before_the_hand_over_is_caught() -> None:
    """A destination that resumes its incoming copy while the source still runs the guest
    (what resuming before `MigrationDone` commits would do) breaks invariant 1 twice: two
    unpaused copies, and a resume no committed hand-over allowed."""
    sc = parse_scenario(LIVE_MIGRATION, "live_migration")
    world = World(
        sc.seed, sc.node_settings(), sc.guests, {"initial_placement_wait_s": 2.0}, cluster="sim"
    )
    checker = InvariantChecker(world)
    world.at(5.0, lambda: world.migrate("g1", "n2"))
    world.run_until(5.5)
    assert world.running("g1") == ["n1"] and world.running("g1", paused=True) == ["n2"]
    assert not checker.violations  # a paused incoming copy next to the source is allowed

    def buggy_resume() -> None:
        dest = world.nodes["n2"]
        dest.domains["g1"] = replace(dest.domains["g1"], paused=False)
        world.physical_version += 1
        world.record("n2", "domain_resumed", domain="g1", generation=3)

    world.at(5.6, buggy_resume)
    world.run_until(5.7)
    text = "\n".join(checker.violations)
    assert "two running copies of g1: n1, n2" in text
    assert "resumed g1 at generation 3 without a committed migration_done" in text
