"""Network conditions in the core: reported only on change, placement skips nodes lacking a
guest's network and says which, a running guest leaves only after the hold-down and only when
another node has its networks, and a network condition never touches the lease."""

from __future__ import annotations

from dataclasses import replace

from haagent.agent import StopGuest
from haagent.commands import (
    AssignGuests,
    Assignment,
    DefineGuest,
    GuestRunning,
    GuestStarting,
    Join,
    NetworkCondition,
)
from haagent.core.decisions import LocalView
from haagent.core.networks import NETWORK_KEY
from haagent.model import ClusterState, GuestSpec, NodeRole
from haagent.placement import plan
from haagent.ports import DomainObservation
from haagent.statemachine import apply
from tests.helpers.core_views import ACCEPTED, build, commands, core, of, view, with_lease

NET = GuestSpec("g", "dom-g", 256, networks=("br-backend",))
HOLD_S = 10.0


def joined_net(*nodes: str) -> ClusterState:
    return build(
        *(Join(n, f"{n}-inc", NodeRole.HYPERVISOR, True, 0.0) for n in nodes),
        DefineGuest(NET, 0.0),
    )


def running_on_n1(*nodes: str) -> ClusterState:
    return build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        GuestRunning("g", "n1", 2, 0.0),
        state=joined_net(*nodes),
    )


def lose(state: ClusterState, node: str, *names: str) -> ClusterState:
    return build(NetworkCondition(node, f"{node}-inc", names, 0.0), state=state)


def local_net(now: float, missing: tuple[str, ...] | None, running: bool = True) -> LocalView:
    obs = DomainObservation("dom-g", running=True, generation=2, cluster="c")
    return LocalView({"dom-g": obs} if running else {}, now, missing_networks=missing)


def test_the_condition_is_proposed_only_when_it_differs_from_the_committed_one() -> None:
    c = core(guests=(NET,))
    state = joined_net("n1", "n2", "n3")
    step = c.tick(1.0, view(state), local_net(1.0, ("br-backend",), running=False))
    (cond,) = of(NetworkCondition, commands(step))
    assert cond == NetworkCondition("n1", "n1-inc", ("br-backend",), cond.at)
    state = build(cond, state=state)
    c.proposal_done(NETWORK_KEY, ACCEPTED, 1.1)
    for missing in (("br-backend",), None):
        step = c.tick(2.0, view(state), local_net(2.0, missing, running=False))
        assert not of(NetworkCondition, commands(step))
    step = c.tick(3.0, view(state), local_net(3.0, (), running=False))
    assert of(NetworkCondition, commands(step)) == [NetworkCondition("n1", "n1-inc", (), 3.0)]


def test_placement_skips_a_node_lacking_the_network_and_explains_a_refusal() -> None:
    state = lose(joined_net("n1", "n2", "n3"), "n1", "br-backend")
    placed = {p.node for p in plan(state, {"n1": 1000, "n2": 1000, "n3": 1000}, 4).placements}
    assert placed == {"n2"}  # n2 and n3 tie on memory: by name
    state = lose(lose(state, "n2", "br-backend"), "n3", "br-backend", "eth1")
    result = plan(state, {"n1": 1000, "n2": 1000, "n3": 1000}, 4)
    assert not result.placements
    (unplaced,) = result.unplaced
    assert unplaced.why == "n1 lacks br-backend; n2 lacks br-backend; n3 lacks br-backend"
    assert not unplaced.hopeless  # waits for a network, never the error state


def test_a_running_guest_leaves_only_after_the_hold_down() -> None:
    c = core(guests=(NET,), network_hold_down_s=HOLD_S)
    state = lose(running_on_n1("n1", "n2", "n3"), "n1", "br-backend")
    now = 1.0
    while now < 1.0 + HOLD_S:
        with_lease(c, state, now)
        step = c.tick(now, view(state), local_net(now, ("br-backend",)))
        assert not of(StopGuest, step.actions), now
        now += 0.5
    with_lease(c, state, now)
    step = c.tick(now, view(state), local_net(now, ("br-backend",)))
    (stop,) = of(StopGuest, step.actions)
    assert stop.guest == "g"
    assert any("n1 lacks br-backend" in str(e) for e in step.events)


def test_a_flapping_link_does_not_bounce_the_guest() -> None:
    c = core(guests=(NET,), network_hold_down_s=HOLD_S)
    healthy = running_on_n1("n1", "n2", "n3")
    lost = lose(healthy, "n1", "br-backend")
    now = 1.0
    for flap in range(6):  # down 6 s, up 1 s: never down for a whole hold-down
        for _ in range(12):
            with_lease(c, lost, now)
            step = c.tick(now, view(lost), local_net(now, None))
            assert not of(StopGuest, step.actions), (flap, now)
            now += 0.5
        with_lease(c, healthy, now)
        step = c.tick(now, view(healthy), local_net(now, None))
        assert not of(StopGuest, step.actions)
        now += 1.0


def test_with_no_other_node_having_the_network_the_guest_stays_and_it_is_reported() -> None:
    c = core(guests=(NET,), network_hold_down_s=HOLD_S)
    state = running_on_n1("n1", "n2", "n3")
    for n in ("n1", "n2", "n3"):
        state = lose(state, n, "br-backend")
    reports = []
    for i in range(40):
        now = 1.0 + i * 0.5
        step = c.tick(now, view(state), local_net(now, None))
        assert not of(StopGuest, step.actions)
        reports += [e for e in step.events if e.name == "network_lost_stays"]
        for p in step.proposals:  # commit the heartbeat: the lease stays valid
            c.proposal_done(p.key, ACCEPTED, now + 0.01)
    assert len(reports) == 1  # said once per loss, not every pass
    assert "n1 lacks br-backend; no node has them" in str(reports[0])


def test_a_network_condition_never_touches_the_lease() -> None:
    state = running_on_n1("n1", "n2")
    before = state.node("n1")
    state, result = apply(state, NetworkCondition("n1", "n1-inc", ("br-backend",), 1.0))
    assert result.accepted
    after = state.node("n1")
    assert replace(after, missing_networks=()) == before


def test_no_start_where_the_network_is_missing() -> None:
    state = build(AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0), state=joined_net("n1"))
    state = lose(state, "n1", "br-backend")
    _, result = apply(state, GuestStarting("g", "n1", 1, 0.0))
    assert not result.accepted and result.detail == "n1 lacks br-backend"
    c = core(guests=(NET,))
    with_lease(c, state, 1.0)
    step = c.tick(1.1, view(state), local_net(1.1, ("br-backend",), running=False))
    assert not of(GuestStarting, commands(step))
