"""core.arming: which disarm gives this node the hold (keep guests without a lease, release the
watchdog), and which only counts for its leader duties."""

from __future__ import annotations

from dataclasses import replace

from haagent.core.arming import ArmingClock
from haagent.model import Arming
from tests.helpers.core_views import joined, settings

DISARMED = Arming(disarmed=True, version=1, for_s=10.0)


def test_a_disarm_seen_with_a_valid_lease_holds_for_its_duration_from_then() -> None:
    state = replace(joined("n1", "n2", "n3"), arming=DISARMED)
    clock = ArmingClock(settings("n1"), "inc-1")
    clock.observe(state, 100.0, lease_valid=True)
    assert clock.hold(state, 109.9) and clock.acts_disarmed(state, 109.9)
    assert not clock.hold(state, 110.0) and not clock.disarmed(state, 110.0)


def test_a_disarm_learned_without_a_lease_counts_for_the_leader_but_gives_no_hold() -> None:
    # Swarm seed 2860: a restarted agent replays the disarm from its log; counting all of it
    # from then kept its guest past the cluster's re-arm while it was cut off.
    state = replace(joined("n1", "n2", "n3"), arming=DISARMED)
    clock = ArmingClock(settings("n1"), "inc-2")
    clock.observe(state, 100.0, lease_valid=False)
    clock.observe(state, 101.0, lease_valid=True)  # a later lease does not change when it saw it
    assert clock.disarmed(state, 105.0)  # no declarations, no re-arm before its own count
    assert not clock.acts_disarmed(state, 105.0) and not clock.hold(state, 105.0)


def test_a_new_disarm_version_is_observed_afresh() -> None:
    state = replace(joined("n1", "n2", "n3"), arming=DISARMED)
    clock = ArmingClock(settings("n1"), "inc-1")
    clock.observe(state, 100.0, lease_valid=False)
    again = replace(state, arming=replace(DISARMED, version=3))
    clock.observe(again, 200.0, lease_valid=True)
    assert clock.hold(again, 205.0) and not clock.hold(again, 210.0)
