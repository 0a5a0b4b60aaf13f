"""The guest-RAID1 storage gate: data before compute for a guest mirroring two legs.

A raid1 guest has two legs, each a disk held by one hypervisor; the guest's own md RAID1
mirrors them. Which legs missed writes is replicated state (`GuestRecord.stale_legs`), kept by
the guest's owner at its generation (DESIGN rule 5):

- A leg is reachable from a node when that node holds it, or its holder is up (a failed,
  fenced or down holder exports nothing; storage fencing may cut it on purpose).
- Before a start without one of its legs, that leg is committed stale (`LegStale`), and the
  start waits for the commit. A start attaches only fresh, reachable legs, never a stale one.
- Never a start from stale legs alone: with no fresh leg reachable the start waits, and says
  why ("only leg b (stale) reachable"). `apply` keeps at least one leg fresh.
- While the guest runs here: a leg the guest's array reports faulty, missing or resyncing, or
  whose holder is not up, is committed stale at once. Leg disks pause the guest on a write
  error (`error_policy='stop'`), so it writes nothing without the leg before that commit;
  only then is the dead leg detached, so the guest writes on without it. A guest already
  paused cannot acknowledge that detach: once it failed, the guest is destroyed here and
  started again from its fresh legs (a restart instead of a failover; never a stale start).
  A stale leg whose holder is up is re-attached (`AttachLeg`; a faulty one is detached
  first), the array resyncs it, and only when an observation from inside the guest shows it
  in sync, after this owner saw it out of sync at this generation, is it committed fresh
  (`LegFresh`). Never on a timer.
- A stale leg the array shows in sync although this agent never saw it out of sync (it
  restarted mid-way, or its holder came back before the array noticed) is not trusted: it is
  detached, so the re-attach and resync prove it.

The second gate (rule 6) is outside the core: the holders stop exporting a leg to a node
that is cut off (storage fencing), and QEMU holds each leg open for one guest only.
"""

from __future__ import annotations

from haagent.commands import LegFresh, LegStale
from haagent.core.decisions import (
    ActionResult,
    AttachLeg,
    DestroyDomain,
    DetachLeg,
    Event,
    LocalView,
    Proposal,
    StartLeg,
    event,
)
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.storage import StartBlocked, WantedHere
from haagent.model import ClusterState, GuestRecord, Leg, NodeRole, NodeState
from haagent.ports import MEMBER_IN_SYNC, MEMBER_MISSING, MirrorObservation

# After an attach returned (or failed), how long before the same leg is attached again while
# the array still does not show it: the guest's md needs a moment to see a hot-plugged disk.
LEG_REATTACH_S = 10.0


def reachable(state: ClusterState, leg: Leg, node: str) -> bool:
    """Can `node` attach `leg` now: it holds it, or its holder is up (and exporting)."""
    return leg.holder == node or state.node(leg.holder).state is NodeState.UP


def usable_legs(state: ClusterState, guest: GuestRecord, node: str) -> tuple[Leg, ...]:
    """The legs a start on `node` may use: fresh and reachable, in leg order."""
    return tuple(
        leg
        for leg in guest.spec.legs
        if not guest.leg_stale(leg.id) and reachable(state, leg, node)
    )


def why_no_fresh_leg(state: ClusterState, guest: GuestRecord, node: str) -> str:
    """Why a start on `node` has no fresh leg ("" when it has one), for status and logs."""
    if usable_legs(state, guest, node):
        return ""
    stale = [leg.id for leg in guest.spec.legs if guest.leg_stale(leg.id)]
    reach = [leg.id for leg in guest.spec.legs if reachable(state, leg, node)]
    away = [
        f"leg {leg.id} on {leg.holder} ({state.node(leg.holder).state})"
        for leg in guest.spec.legs
        if not guest.leg_stale(leg.id) and not reachable(state, leg, node)
    ]
    if reach and set(reach) <= set(stale):
        head = f"only leg {', '.join(reach)} (stale) reachable"
    else:
        head = "no fresh leg reachable"
    return f"{guest.name}: {head}" + (f"; fresh {', '.join(away)}" if away else "")


def why_waiting(state: ClusterState, guest: GuestRecord) -> str | None:
    """Why no up hypervisor may start `guest` from its legs now, for the status: the reason of
    the first such node in name order (e.g. "g1: only leg b (stale) reachable; fresh leg a on
    hv1 (fenced)"). None when some up hypervisor that may run it has a fresh, reachable leg,
    or when none that may run it is up (then the nodes' states say why). Pure: every agent
    computes it from the committed state alone."""
    whys = []
    for name, node in sorted(state.nodes.items()):
        if node.role is not NodeRole.HYPERVISOR or node.state is not NodeState.UP:
            continue
        if not guest.spec.allows(name):
            continue
        why = why_no_fresh_leg(state, guest, name)
        if not why:
            return None
        whys.append(why)
    return whys[0] if whys else None


def placement_rank(state: ClusterState, guest: GuestRecord, node: str) -> int:
    """Placement preference of a raid1 guest (lower first): a holder of a fresh leg, then
    a holder of a stale one, then any other node (`raid1_run_on = "any"`)."""
    for leg in guest.spec.legs:
        if leg.holder == node:
            return 1 if guest.leg_stale(leg.id) else 0
    return 2


def _subject(guest: str, leg: str) -> str:
    return f"{guest}/{leg}"


class Raid1Storage:
    def __init__(self, node: str, commit_timeout_s: float) -> None:
        self._node = node
        self._commit_timeout_s = commit_timeout_s
        # (guest, leg) -> (generation, observed_at): the first observation at that generation
        # that showed the stale leg out of sync (missing, faulty, resyncing). Evidence for
        # `LegFresh` is an in-sync observation taken after it.
        self._unsynced: dict[tuple[str, str], tuple[int, float]] = {}
        # (guest, leg) -> when this node's last attach or detach of it returned.
        self._touched_at: dict[tuple[str, str], float] = {}
        # (guest, leg) -> the generation at which a detach of it failed (unknown included).
        self._detach_failed: dict[tuple[str, str], int] = {}

    # -- the gate ---------------------------------------------------------------------------

    def may_start(
        self, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> StartBlocked | None:
        if not guest.spec.allows(self._node):
            return StartBlocked(f"{self._node} holds no leg of {guest.name}", True)
        why = why_no_fresh_leg(state, guest, self._node)
        return StartBlocked(why, False) if why else None

    def before_start(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> bool:
        """Commit every fresh leg the start goes without as stale; ready once none is left."""
        ready = True
        for leg in guest.spec.legs:
            if guest.leg_stale(leg.id) or reachable(state, leg, self._node):
                continue
            ready = False
            holder = state.node(leg.holder).state
            self._stale(out, guest, leg, f"starting on {self._node} while {leg.holder} is {holder}")
        return ready

    def start_legs(self, state: ClusterState, guest: GuestRecord) -> tuple[StartLeg, ...]:
        return tuple(
            StartLeg(leg.id, leg.source_for(self._node))
            for leg in usable_legs(state, guest, self._node)
        )

    def while_running(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> None:
        obs = local.mirrors.get(guest.name)
        for leg in guest.spec.legs:
            member = obs.members.get(leg.id) if obs is not None else None
            if guest.leg_stale(leg.id):
                self._stale_leg(out, state, guest, leg, obs, member, local.observed_at)
                continue
            self._unsynced.pop((guest.name, leg.id), None)
            if not reachable(state, leg, self._node):
                why = f"{leg.holder} is {state.node(leg.holder).state}"
                self._stale(out, guest, leg, f"running on {self._node} while {why}")
            elif member is not None and member != MEMBER_IN_SYNC:
                self._stale(out, guest, leg, f"the guest's RAID1 reports it {member}")

    def after_stop(
        self, out: Outbox, state: ClusterState, local: LocalView, wanted_here: WantedHere
    ) -> None:
        """Legs go with their domain: nothing to release."""
        return None

    # -- results of this gate's actions -----------------------------------------------------

    def action_done(
        self, action: AttachLeg | DetachLeg, result: ActionResult, now: float
    ) -> list[Event]:
        key = (action.guest, action.leg)
        self._touched_at[key] = now
        if result.ok or result.refused:
            self._detach_failed.pop(key, None)
            return []
        if isinstance(action, DetachLeg):
            self._detach_failed[key] = action.generation
        name = "leg_attach_failed" if isinstance(action, AttachLeg) else "leg_detach_failed"
        return [event(name, guest=action.guest, leg=action.leg, detail=result.detail)]

    # -- helpers ----------------------------------------------------------------------------

    def _stale_leg(
        self,
        out: Outbox,
        state: ClusterState,
        guest: GuestRecord,
        leg: Leg,
        obs: MirrorObservation | None,
        member: str | None,
        observed_at: float,
    ) -> None:
        """A stale leg of a guest running here: re-attach it, watch the resync, and commit it
        fresh on the evidence (module docstring)."""
        key = (guest.name, leg.id)
        if not reachable(state, leg, self._node):
            # Its disk is dead here, and it is committed stale: detach it, so the guest writes
            # on without it. A guest already paused on a write to it (error_policy='stop')
            # cannot acknowledge the unplug: once a detach failed, restart the guest (destroy
            # it here; it starts again from its fresh legs only, the stale one left out).
            why = f"{leg.holder} is {state.node(leg.holder).state}"
            if self._detach_failed.get(key) == guest.generation:
                destroy = DestroyDomain(
                    guest.spec.domain,
                    f"stuck on the dead leg {leg.id} ({why}): restart from its fresh legs",
                    guest.generation,
                )
                if out.act(destroy):
                    out.note("leg_restart", guest=guest.name, leg=leg.id, reason=why)
            elif member != MEMBER_MISSING and self._settled(key, out.now):
                self._detach(out, guest, leg, why)
            return
        if obs is None or member is None:
            return  # not known now: neither attached nor trusted on a guess
        seen = self._unsynced.get(key)
        if seen is not None and seen[0] != guest.generation:
            seen = None  # evidence from another start proves nothing about this one
        if member != MEMBER_IN_SYNC:
            if seen is None:
                self._unsynced[key] = (guest.generation, observed_at)
            if member == MEMBER_MISSING:
                if self._settled(key, out.now):
                    source = leg.source_for(self._node)
                    if out.act(AttachLeg(guest.name, leg.id, source, guest.generation)):
                        out.note("leg_attach", guest=guest.name, leg=leg.id, source=source)
            elif member != "resyncing" and self._settled(key, out.now):
                self._detach(out, guest, leg, f"the guest's RAID1 reports it {member}")
            return
        if seen is not None and observed_at > seen[1]:
            evidence = (
                f"the guest's RAID1 reports it in sync after it was seen out of sync at "
                f"generation {guest.generation}"
            )
            command = LegFresh(
                guest.name, leg.id, self._node, guest.generation, evidence, out.wall()
            )
            key_p = ProposalKey(ProposalKind.LEG_FRESH, _subject(guest.name, leg.id))
            if out.propose(Proposal(key_p, command, self._commit_timeout_s)):
                out.note("leg_fresh", guest=guest.name, leg=leg.id)
            return
        others_in_sync = all(
            obs.members.get(o.id) == MEMBER_IN_SYNC and not guest.leg_stale(o.id)
            for o in guest.spec.legs
            if o.id != leg.id
        )
        if seen is None and others_in_sync and self._settled(key, out.now):
            self._detach(out, guest, leg, "in sync without a resync this agent saw")

    def _settled(self, key: tuple[str, str], now: float) -> bool:
        touched = self._touched_at.get(key)
        return touched is None or now >= touched + LEG_REATTACH_S

    def _detach(self, out: Outbox, guest: GuestRecord, leg: Leg, reason: str) -> None:
        if out.act(DetachLeg(guest.name, leg.id, guest.generation, reason)):
            out.note("leg_detach", guest=guest.name, leg=leg.id, reason=reason)

    def _stale(self, out: Outbox, guest: GuestRecord, leg: Leg, reason: str) -> None:
        command = LegStale(guest.name, leg.id, self._node, guest.generation, reason, out.wall())
        key = ProposalKey(ProposalKind.LEG_STALE, _subject(guest.name, leg.id))
        if out.propose(Proposal(key, command, self._commit_timeout_s)):
            out.note("leg_stale", guest=guest.name, leg=leg.id, reason=reason)
