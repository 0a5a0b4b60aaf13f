"""Guest RAID1: the replicated leg freshness (`LegStale`/`LegFresh` in `apply`) and the
`Raid1Storage` gate's rules (haagent.core.raid1), each with a case that fails if the rule is
broken. States are built by applying real commands."""

from __future__ import annotations

from haagent.commands import (
    AssignGuests,
    Assignment,
    DeclareFailed,
    DefineGuest,
    FenceResult,
    GuestRunning,
    GuestStarting,
    GuestStopped,
    Join,
    LegFresh,
    LegStale,
)
from haagent.core.decisions import (
    ActionResult,
    AttachLeg,
    DestroyDomain,
    DetachLeg,
    LocalView,
    StartLeg,
)
from haagent.core.inflight import InFlight, Outbox
from haagent.core.keys import ProposalKind
from haagent.core.raid1 import (
    LEG_REATTACH_S,
    Raid1Storage,
    placement_rank,
    why_no_fresh_leg,
    why_waiting,
)
from haagent.model import (
    ClusterState,
    FailureEvidence,
    FenceMethod,
    GuestRecord,
    GuestSpec,
    Leg,
    NodeRole,
    StorageKind,
)
from haagent.placement import plan
from haagent.ports import ConsensusView, MirrorObservation
from haagent.statemachine import apply
from haagent.status import _legs_document, _legs_lines, build_status
from tests.helpers.core_views import build, joined

LEGS = (
    Leg("a", "n1", "/dev/vg/g-a", "nbd://n1:10809/g-a"),
    Leg("b", "n2", "/dev/vg/g-b", "nbd://n2:10809/g-b"),
)
SPEC = GuestSpec("g", "dom-g", 256, storage=StorageKind.RAID1, legs=LEGS)


def starting_on(node: str, *down: str) -> ClusterState:
    """g defined, `down` nodes failed and fenced, g assigned to `node` and starting there
    (generation 2)."""
    state = build(DefineGuest(SPEC, 0.0), state=joined("n1", "n2", "n3"))
    for n in down:
        ev = FailureEvidence("n3", 1, 9.0, "silent", 0.0)
        state = build(
            DeclareFailed(n, 1, ev),
            FenceResult(n, 1, True, FenceMethod.AGENT, "off", 0.0),
            state=state,
        )
    return build(
        AssignGuests((Assignment("g", node, 0),), "placed", 0.0),
        GuestStarting("g", node, 1, 0.0),
        state=state,
    )


def running_on(node: str, *down: str) -> ClusterState:
    return build(GuestRunning("g", node, 2, 0.0), state=starting_on(node, *down))


def guest(state: ClusterState) -> GuestRecord:
    return state.guests["g"]


def outbox(now: float = 10.0, in_flight: InFlight | None = None) -> Outbox:
    return Outbox(now, 0.0, in_flight or InFlight())


def seen(at: float, **members: str) -> LocalView:
    return LocalView({}, at, mirrors={"g": MirrorObservation("g", members, None)})


# --- apply -------------------------------------------------------------------------------------


def test_leg_stale_is_accepted_from_the_owner_at_its_generation_only() -> None:
    state = starting_on("n2", "n1")
    for wrong in (
        LegStale("g", "a", "n1", 2, "x", 0.0),  # not the owner
        LegStale("g", "a", "n2", 1, "x", 0.0),  # an older generation
        LegStale("g", "c", "n2", 2, "x", 0.0),  # no such leg
        LegStale("g", "a", "n2", 2, "x" * 501, 0.0),  # too long to keep
    ):
        after, result = apply(state, wrong)
        assert not result.accepted and guest(after).stale_legs == (), wrong
    state, result = apply(state, LegStale("g", "a", "n2", 2, "n1 is fenced", 0.0))
    assert result.accepted and guest(state).leg_stale("a") and not guest(state).leg_stale("b")
    assert guest(state).stale_legs[0].generation == 2


def test_the_last_fresh_leg_is_never_committed_stale() -> None:
    """A guest is never started from stale legs alone: so at least one leg stays fresh."""
    state = build(LegStale("g", "a", "n2", 2, "n1 is fenced", 0.0), state=starting_on("n2", "n1"))
    after, result = apply(state, LegStale("g", "b", "n2", 2, "faulty", 0.0))
    assert not result.accepted and "last fresh leg" in result.detail
    assert not guest(after).leg_stale("b")


def test_leg_fresh_clears_only_that_leg_and_a_repeat_is_harmless() -> None:
    state = build(LegStale("g", "a", "n2", 2, "n1 is fenced", 0.0), state=starting_on("n2", "n1"))
    fresh = LegFresh("g", "a", "n2", 2, "in sync after resync", 0.0)
    state, result = apply(state, fresh)
    assert result.accepted and guest(state).stale_legs == ()
    state, again = apply(state, fresh)
    assert again.accepted and again.detail == "unchanged"


def test_a_spec_change_keeps_the_staleness_of_legs_that_stay() -> None:
    state = build(LegStale("g", "a", "n2", 2, "n1 is fenced", 0.0), state=running_on("n2", "n1"))
    # Identity fields (the legs) change only while stopped; the placement preference may
    # change while it runs, and the stale leg stays stale.
    changed = GuestSpec("g", "dom-g", 256, storage=StorageKind.RAID1, legs=LEGS, priority=5)
    version = guest(state).spec_version
    state = build(DefineGuest(changed, 0.0, expect_version=version), state=state)
    assert guest(state).leg_stale("a")


# --- the gate: starts --------------------------------------------------------------------------


def test_a_start_without_a_leg_commits_it_stale_first_and_starts_from_fresh_legs_only() -> None:
    state = starting_on("n2", "n1")
    gate = Raid1Storage("n2", 1.0)
    local = LocalView({}, 10.0)
    assert gate.may_start(state, guest(state), local) is None
    out = outbox()
    assert not gate.before_start(out, state, guest(state), local)  # waits for the commit
    (proposal,) = out.proposals
    assert proposal.command == LegStale(
        "g", "a", "n2", 2, "starting on n2 while n1 is fenced", 10.0
    )
    state = build(proposal.command, state=state)
    assert gate.before_start(outbox(), state, guest(state), local)
    assert gate.start_legs(state, guest(state)) == (StartLeg("b", "/dev/vg/g-b"),)


def test_never_a_start_from_a_stale_leg_alone_and_the_status_says_why() -> None:
    """Leg b went stale while g ran on n1; n1 is now fenced: only leg b is reachable from n2."""
    state = build(LegStale("g", "b", "n1", 2, "n2 is failed", 0.0), state=running_on("n1"))
    ev = FailureEvidence("n3", 1, 9.0, "silent", 0.0)
    state = build(
        DeclareFailed("n1", 1, ev),
        FenceResult("n1", 1, True, FenceMethod.AGENT, "off", 0.0),
        state=state,
    )
    blocked = Raid1Storage("n2", 1.0).may_start(state, guest(state), LocalView({}, 10.0))
    assert blocked is not None and not blocked.give_up
    assert blocked.why == "g: only leg b (stale) reachable; fresh leg a on n1 (fenced)"
    assert why_no_fresh_leg(state, guest(state), "n2") == blocked.why
    # The status document (every agent's, from the committed state alone) and its text say it.
    assert why_waiting(state, guest(state)) == blocked.why
    doc = build_status(
        node="n3",
        cluster="c",
        pid=1,
        incarnation="n3-1",
        view=ConsensusView(state=state, leader="n3"),
        now=1.0,
        lease_until=2.0,
        loop_age_s=0.0,
        local={},
    )
    assert doc["guests"]["g"]["legs_wait"] == blocked.why
    assert f"WAITS: {blocked.why}" in _legs_lines(doc["guests"])
    # Nothing waits while a node may start it from a fresh leg, nor when no node may run it.
    assert why_waiting(running_on("n1"), guest(running_on("n1"))) is None
    both_down = build(
        DeclareFailed("n2", 1, ev),
        FenceResult("n2", 1, True, FenceMethod.AGENT, "off", 0.0),
        state=state,
    )
    assert why_waiting(both_down, guest(both_down)) is None


CAPACITY = {"n1": 4096, "n2": 4096, "n3": 4096}


def test_placement_prefers_a_fresh_leg_holder_and_never_a_node_with_stale_legs_only() -> None:
    state = build(DefineGuest(SPEC, 0.0), state=joined("n1", "n2", "n3"))
    (placed,) = plan(state, CAPACITY, 4).placements
    assert placed.node in ("n1", "n2")  # holders only (raid1_run_on = "holders")
    # Leg a went stale while g ran on n2; n2 then failed and was fenced; n1 is back.
    state = build(LegStale("g", "a", "n2", 2, "x", 0.0), state=running_on("n2", "n1"))
    ev = FailureEvidence("n3", 1, 9.0, "silent", 0.0)
    state = build(
        DeclareFailed("n2", 1, ev),
        FenceResult("n2", 1, True, FenceMethod.AGENT, "off", 0.0),
        Join("n1", "n1-inc2", NodeRole.HYPERVISOR, True, 0.0),
        state=state,
    )
    assert placement_rank(state, guest(state), "n2") == 0  # holds the fresh leg
    assert placement_rank(state, guest(state), "n1") == 1  # holds the stale leg
    assert placement_rank(state, guest(state), "n3") == 2
    result = plan(state, CAPACITY, 4)
    assert not result.placements
    (unplaced,) = result.unplaced
    assert unplaced.why == "g: only leg a (stale) reachable; fresh leg b on n2 (fenced)"


# --- the gate: while running -------------------------------------------------------------------


def stale_a_running_on_n2() -> ClusterState:
    """g runs on n2 from leg b; leg a is stale; n1 (its holder) is back up."""
    state = build(LegStale("g", "a", "n2", 2, "n1 is fenced", 0.0), state=running_on("n2", "n1"))
    return build(Join("n1", "n1-inc2", NodeRole.HYPERVISOR, True, 0.0), state=state)


def test_a_leg_whose_holder_failed_is_committed_stale_then_detached() -> None:
    """The guest pauses on its write to the dead leg (error_policy='stop'): first the commit,
    and only on a later pass (once committed) the detach that lets it write on."""
    state = running_on("n1")
    ev = FailureEvidence("n3", 1, 9.0, "silent", 0.0)
    state = build(DeclareFailed("n2", 1, ev), state=state)
    gate = Raid1Storage("n1", 1.0)
    out = outbox()
    gate.while_running(out, state, guest(state), LocalView({}, 10.0))  # paused: unknown array
    (proposal,) = out.proposals
    assert isinstance(proposal.command, LegStale) and proposal.command.leg == "b"
    assert not out.actions  # never detached (writes resumed) before the commit
    state = build(proposal.command, state=state)
    out = outbox(11.0)
    gate.while_running(out, state, guest(state), LocalView({}, 11.0))
    assert out.actions == [DetachLeg("g", "b", 2, "n2 is failed")]


def test_a_guest_that_cannot_unplug_its_dead_leg_is_restarted_from_its_fresh_leg() -> None:
    """Paused on the dead leg (error_policy='stop'), the guest cannot acknowledge the
    detach: once it failed, the owner destroys it here, so it starts again from leg a."""
    state = running_on("n1")
    ev = FailureEvidence("n3", 1, 9.0, "silent", 0.0)
    state = build(DeclareFailed("n2", 1, ev), LegStale("g", "b", "n1", 2, "x", 0.0), state=state)
    gate = Raid1Storage("n1", 1.0)
    detach = DetachLeg("g", "b", 2, "n2 is failed")
    events = gate.action_done(detach, ActionResult(False, "detach timed out", unknown=True), 10.0)
    assert [e.name for e in events] == ["leg_detach_failed"]
    out = outbox(10.1)
    gate.while_running(out, state, guest(state), LocalView({}, 10.1))
    (destroy,) = out.actions
    assert isinstance(destroy, DestroyDomain) and destroy.domain == "dom-g"
    assert destroy.generation == 2
    # Started again: leg b (stale, unreachable) is left out.
    state = build(
        GuestStopped("g", "n1", 2, False, False, "stopped", 0.0),
        GuestStarting("g", "n1", 2, 0.0),
        state=state,
    )
    assert gate.start_legs(state, guest(state)) == (StartLeg("a", "/dev/vg/g-a"),)


def test_a_faulty_member_is_committed_stale() -> None:
    state = running_on("n1")
    out = outbox()
    Raid1Storage("n1", 1.0).while_running(
        out, state, guest(state), seen(10.0, a="in_sync", b="faulty")
    )
    (proposal,) = out.proposals
    assert proposal.key.kind is ProposalKind.LEG_STALE and proposal.command.leg == "b"  # type: ignore[attr-defined]


def test_a_returning_leg_is_attached_and_fresh_only_after_a_resync_seen_from_inside() -> None:
    state = stale_a_running_on_n2()
    gate = Raid1Storage("n2", 1.0)
    in_flight = InFlight()
    out = outbox(10.0, in_flight)
    gate.while_running(out, state, guest(state), seen(10.0, a="missing", b="in_sync"))
    assert out.actions == [AttachLeg("g", "a", "nbd://n1:10809/g-a", 2)]
    assert not out.proposals
    gate.action_done(out.actions[0], ActionResult(True), 10.1)  # type: ignore[arg-type]
    in_flight.actions.clear()
    out = outbox(11.0, in_flight)
    gate.while_running(out, state, guest(state), seen(11.0, a="resyncing", b="in_sync"))
    assert not out.proposals and not out.actions  # resyncing: wait, never on a timer
    out = outbox(12.0, in_flight)
    gate.while_running(out, state, guest(state), seen(12.0, a="in_sync", b="in_sync"))
    (proposal,) = out.proposals
    assert isinstance(proposal.command, LegFresh) and proposal.command.leg == "a"
    assert "in sync" in proposal.command.evidence


def test_in_sync_without_a_resync_this_agent_saw_is_not_trusted_but_re_proven() -> None:
    """After an agent restart (or a holder back before the array noticed), the stale leg
    may read in sync: never committed fresh on that; detached, so a resync proves it."""
    state = stale_a_running_on_n2()
    out = outbox()
    Raid1Storage("n2", 1.0).while_running(
        out, state, guest(state), seen(10.0, a="in_sync", b="in_sync")
    )
    assert not out.proposals
    assert out.actions == [DetachLeg("g", "a", 2, "in sync without a resync this agent saw")]


def test_an_in_sync_observation_older_than_the_out_of_sync_one_proves_nothing() -> None:
    state = stale_a_running_on_n2()
    gate = Raid1Storage("n2", 1.0)
    gate.while_running(outbox(10.0), state, guest(state), seen(10.0, a="resyncing", b="in_sync"))
    out = outbox(11.0)
    gate.while_running(out, state, guest(state), seen(10.0, a="in_sync", b="in_sync"))
    assert not out.proposals


def test_a_failed_attach_is_retried_only_after_a_pause() -> None:
    state = stale_a_running_on_n2()
    gate = Raid1Storage("n2", 1.0)
    attach = AttachLeg("g", "a", "nbd://n1:10809/g-a", 2)
    gate.action_done(attach, ActionResult(False, "no route"), 10.0)
    out = outbox(10.0 + LEG_REATTACH_S / 2)
    gate.while_running(out, state, guest(state), seen(out.now, a="missing", b="in_sync"))
    assert not out.actions
    out = outbox(10.0 + LEG_REATTACH_S)
    gate.while_running(out, state, guest(state), seen(out.now, a="missing", b="in_sync"))
    assert out.actions == [attach]


# --- status ------------------------------------------------------------------------------------


def test_status_shows_each_legs_freshness() -> None:
    state = build(LegStale("g", "a", "n2", 2, "n1 is fenced", 0.0), state=running_on("n2", "n1"))
    doc = {"guests": {"g": {"legs": _legs_document(guest(state))}}}
    assert doc["guests"]["g"]["legs"] == {
        "a": {
            "holder": "n1",
            "fresh": False,
            "stale_since_generation": 2,
            "stale_reason": "n1 is fenced",
            "member": None,
            "resync_progress": None,
        },
        "b": {
            "holder": "n2",
            "fresh": True,
            "stale_since_generation": None,
            "stale_reason": None,
            "member": None,
            "resync_progress": None,
        },
    }
    # Where it runs, how its RAID1 sees each leg, with the resync's progress.
    seen = MirrorObservation("g", {"a": "resyncing", "b": "in_sync"}, 0.42)
    doc = {"guests": {"g": {"legs": _legs_document(guest(state), seen)}}}
    assert doc["guests"]["g"]["legs"]["a"]["resync_progress"] == 0.42
    assert doc["guests"]["g"]["legs"]["b"]["resync_progress"] is None
    text = "\n".join(_legs_lines(doc["guests"]))
    assert "a    n1      resyncing 42%  STALE since gen 2: n1 is fenced" in text, text
    assert "b    n2      in_sync        fresh" in text, text
