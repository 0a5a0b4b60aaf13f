"""The simulator's guest RAID1: the FakeRaid1's own rules, and the invariants "never a start
from stale legs only" and "never two writers on one leg" catching a core that breaks them."""

from __future__ import annotations

from pathlib import Path

import pytest

from haagent import placement
from haagent.core.decisions import StartLeg
from haagent.core.raid1 import Raid1Storage, reachable
from haagent.model import ClusterState, GuestRecord, GuestSpec, StorageKind
from haagent.sim.raid1 import RESYNC_S, FakeRaid1
from haagent.sim.scenario import parse_scenario, run_scenario, sim_legs

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
SPEC = GuestSpec("g", "g", 256, storage=StorageKind.RAID1, legs=sim_legs("g", ["n1", "n2"]))


def everywhere(a: str, b: str) -> bool:
    return True


def test_a_start_with_a_leg_behind_is_recorded_against_the_newest() -> None:
    fake = FakeRaid1([SPEC])
    running = {("n1", "g")}
    assert fake.start("n1", "g", ["a"], everywhere) == ""
    for _ in range(3):
        fake.step(0.0, lambda n, d: (n, d) in running, everywhere)
    assert fake.guests["g"].legs["a"].version == 3 and fake.guests["g"].legs["b"].version == 0
    running.clear()
    fake.step(0.0, lambda n, d: False, everywhere)
    assert fake.start("n2", "g", ["b"], everywhere) == ""
    assert fake.guests["g"].starts[-1] == ("n2", 0, 3)  # the invariant's evidence


def test_an_unreachable_member_pauses_the_guest_which_cannot_then_unplug_it() -> None:
    fake = FakeRaid1([SPEC])
    up = {"n1", "n2"}

    def link(a: str, b: str) -> bool:
        return a in up and b in up

    def running(n: str, d: str) -> bool:
        return n == "n1"

    fake.start("n1", "g", ["a", "b"], link)
    fake.step(0.0, running, link)
    up.discard("n2")
    fake.step(0.1, running, link)
    fake.step(0.2, running, link)
    assert fake.guests["g"].legs["a"].version == 1  # paused: nothing written without b
    assert fake.observe("n1", running) == {}  # a paused guest's agent cannot answer
    assert "paused" in fake.detach("n1", "g", "b")  # nor acknowledge an unplug
    assert fake.guests["g"].legs["a"].version == 1
    # A faulty member whose holder is reachable does not pause it: that one detaches.
    fake = FakeRaid1([SPEC])
    fake.start("n1", "g", ["a", "b"], everywhere)
    fake.guests["g"].instances["n1"].members["b"] = "faulty"
    assert fake.detach("n1", "g", "b") == ""


def test_a_resync_takes_time_and_a_leg_is_current_only_when_it_completed() -> None:
    fake = FakeRaid1([SPEC])

    def running(n: str, d: str) -> bool:
        return n == "n1"

    fake.start("n1", "g", ["a"], everywhere)
    fake.step(0.0, running, everywhere)
    assert fake.attach("n1", "g", "b", everywhere, 1.0) == ""
    fake.step(1.0 + RESYNC_S / 2, running, everywhere)
    assert fake.observe("n1", running)["g"].members["b"] == "resyncing"
    assert fake.guests["g"].legs["b"].version == 0
    fake.step(1.0 + RESYNC_S, running, everywhere)
    assert fake.observe("n1", running)["g"].members["b"] == "in_sync"
    assert fake.guests["g"].legs["b"].version == fake.guests["g"].legs["a"].version


def test_two_writers_on_one_leg_are_reported() -> None:
    fake = FakeRaid1([SPEC])
    fake.start("n1", "g", ["a", "b"], everywhere)
    fake.start("n2", "g", ["a", "b"], everywhere)
    problems = fake.step(0.0, lambda n, d: True, everywhere)
    assert problems == [
        "two writers on leg a of g: n1, n2",
        "two writers on leg b of g: n1, n2",
    ]


def test_starting_from_a_stale_leg_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: the placement and the gate ignore leg staleness (any reachable leg will do,
    nothing is committed first). With only the stale leg reachable the guest then starts from
    it, and the checker must see it."""
    text = (SCENARIOS / "raid1_only_stale_leg_waits.scn").read_text()

    def reachable_legs(
        self: Raid1Storage, state: ClusterState, g: GuestRecord
    ) -> tuple[StartLeg, ...]:
        return tuple(
            StartLeg(leg.id, leg.source_for(self._node))
            for leg in g.spec.legs
            if reachable(state, leg, self._node)
        )

    monkeypatch.setattr(placement, "why_no_fresh_leg", lambda state, g, node: "")
    monkeypatch.setattr(Raid1Storage, "may_start", lambda self, state, g, local: None)
    monkeypatch.setattr(Raid1Storage, "before_start", lambda self, out, state, g, local: True)
    monkeypatch.setattr(Raid1Storage, "start_legs", reachable_legs)
    result = run_scenario(parse_scenario(text, "stale_ignored"))
    assert any("started from stale legs only" in v for v in result.violations), result.violations
    monkeypatch.undo()
    assert not run_scenario(parse_scenario(text, "stale_ignored")).violations
