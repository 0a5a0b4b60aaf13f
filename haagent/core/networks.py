"""Network conditions: what this node reports missing, and how a guest leaves a node lacking
one of its networks (README, "Networks").

Three duties, all outside the lease (a lost bridge is a placement fact; isolation from the
majority is the lease's business, never this module's):

1. Report: when the interfaces the shell found missing differ from this node's committed
   `missing_networks`, propose one `NetworkCondition` (one in flight at a time). A steady
   host proposes nothing.
2. Hold-down: a guest that is starting or running on a node whose *committed* condition
   lacks one of its networks leaves only once that has been true for `network_hold_down_s`
   without a break. Each node measures it on its own monotonic clock from when it applied
   the condition: the owner (`evacuations`) and the leader (`leaving`), never comparing
   clocks. A link that comes back within the hold-down (the condition committed again
   without the name) resets it: a flapping link bounces nothing.
3. The policy, once the hold-down passed, in this order:
   a. live migration: if `live_evacuable` (every hypervisor has a `migration_uri`, shared
      storage, running, no migration of it aborted from this owner) and some node passes
      `migration_refusal` (up hypervisor out of maintenance, allowed, lacks none of its
      networks), the owner keeps the guest running and the leader commits a migration
      intent towards a node `plan` picks (`Migrations.evacuate` with `leaving`'s guests).
      The migration itself is the ordinary one (core.migration): only the owner starts it,
      only with a valid lease and still owner at the intent's generation.
   b. stop and restart: otherwise (storage, no URIs, or the migration aborted: libvirt
      error, timeout, destination gone) if another up hypervisor out of maintenance allows
      the guest and lacks none of its networks, the owner stops it as maintenance does and
      the leader's placement (which skips nodes lacking a guest's networks) restarts it
      there.
   c. stay: with nowhere to go the guest keeps running where it is and `network_lost_stays`
      is reported once per loss; `haagent_guests_lacking_network` counts it (the alert
      HaagentGuestLacksNetwork) and the status says why (`network_loss`).
"""

from __future__ import annotations

from collections.abc import Iterator

from haagent.commands import NetworkCondition
from haagent.core.decisions import Proposal
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.migration import live_evacuable
from haagent.core.settings import AgentSettings
from haagent.model import ClusterState, GuestRecord, GuestState, NodeRole, NodeState
from haagent.statemachine_migration import migration_refusal

NETWORK_KEY = ProposalKey(ProposalKind.NETWORK_CONDITION)


class NetworkConditions:
    def __init__(self, settings: AgentSettings, incarnation: str) -> None:
        self._settings = settings
        self._incarnation = incarnation
        self._lacking_since: dict[str, float] = {}  # guest -> when its loss was first seen
        # guest -> what was reported for its loss (the networks, after "migrate" when it
        # waits for a migration): each outcome is said once per loss, not every pass.
        self._stays: dict[str, tuple[str, ...]] = {}
        # Leader: guest -> (its owner, when this node first saw the owner lacking its network).
        self._leader_since: dict[str, tuple[str, float]] = {}

    def report(self, out: Outbox, state: ClusterState, observed: tuple[str, ...] | None) -> None:
        """Propose this node's condition if it changed (`observed` None: not checked)."""
        rec = state.node(self._settings.node)
        if observed is None or rec.state is not NodeState.UP:
            return
        if rec.incarnation != self._incarnation:
            return  # not joined as this incarnation yet: the join comes first
        missing = tuple(sorted(set(observed)))
        if missing == rec.missing_networks:
            return
        command = NetworkCondition(rec.name, self._incarnation, missing, out.wall())
        if out.propose(Proposal(NETWORK_KEY, command, self._settings.commit_timeout_s)):
            out.note("network_condition", missing=",".join(missing) or "none")

    def evacuations(self, out: Outbox, state: ClusterState) -> dict[str, str]:
        """Guests to hand over because this node lacks their networks (guest -> reason)."""
        s = self._settings
        leave: dict[str, str] = {}
        lacking: set[str] = set()
        for guest, lacks in _lacking(state, s.node):
            lacking.add(guest.name)
            since = self._lacking_since.setdefault(guest.name, out.now)
            if out.now - since < s.network_hold_down_s:
                continue
            why = f"{s.node} lacks {', '.join(lacks)}"
            if guest.migrating is not None:
                continue  # a migration is under way: core.migration decides, not this
            if migration_possible(s, state, guest):
                # The leader commits the intent after its own hold-down; the guest keeps
                # running here until then (a stop now would throw its memory away).
                if self._stays.get(guest.name) != ("migrate", *lacks):
                    self._stays[guest.name] = ("migrate", *lacks)
                    out.note("network_lost_migrates", guest=guest.name, why=why)
            elif elsewhere(state, guest, s.node):
                leave[guest.name] = why
            elif self._stays.get(guest.name) != lacks:
                self._stays[guest.name] = lacks
                out.note("network_lost_stays", guest=guest.name, why=f"{why}; no node has them")
        for name in set(self._lacking_since) - lacking:
            del self._lacking_since[name]
            self._stays.pop(name, None)
        return leave

    def leaving(self, now: float, state: ClusterState) -> dict[str, str]:
        """Leader: the guests whose owner's committed condition has lacked one of their
        networks for the hold-down on this node's clock (guest -> why), for
        `Migrations.evacuate`. Call on every pass as the leader; `not_leading` otherwise, so
        that a node that leads again counts the hold-down afresh."""
        s = self._settings
        out: dict[str, str] = {}
        seen: set[str] = set()
        for name, rec in state.nodes.items():
            if rec.state is not NodeState.UP:
                continue
            for guest, lacks in _lacking(state, name):
                seen.add(guest.name)
                owner, since = self._leader_since.get(guest.name, (name, now))
                if owner != name:
                    owner, since = name, now
                self._leader_since[guest.name] = (owner, since)
                if now - since >= s.network_hold_down_s:
                    out[guest.name] = f"{name} lacks {', '.join(lacks)}"
        for gone in set(self._leader_since) - seen:
            del self._leader_since[gone]
        return out

    def not_leading(self) -> None:
        self._leader_since.clear()


def _lacking(state: ClusterState, node: str) -> Iterator[tuple[GuestRecord, tuple[str, ...]]]:
    """The starting or running guests of `node` that need networks it lacks, with those."""
    rec = state.node(node)
    if not rec.missing_networks:
        return  # the common case: nothing to look at
    for guest in state.guests_of(node):
        if guest.state in (GuestState.STARTING, GuestState.RUNNING):
            lacks = rec.lacks(guest.spec)
            if lacks:
                yield guest, lacks


def migration_possible(settings: AgentSettings, state: ClusterState, guest: GuestRecord) -> bool:
    """Can `guest` leave its owner by live migration now (`live_evacuable`, and some node
    `migration_refusal` accepts as its destination)?"""
    if not live_evacuable(settings, guest):
        return False
    return any(
        name != guest.owner
        and name not in guest.failed_nodes
        and not migration_refusal(state, guest, name)
        for name in state.nodes
    )


def elsewhere(state: ClusterState, guest: GuestRecord, here: str) -> bool:
    """Is there another node the guest could be placed on, network-wise?"""
    return any(
        name != here
        and rec.state is NodeState.UP
        and rec.role is NodeRole.HYPERVISOR
        and not rec.maintenance
        and guest.spec.allows(name)
        and name not in guest.failed_nodes
        and not rec.lacks(guest.spec)
        for name, rec in state.nodes.items()
    )


def network_loss(state: ClusterState, guest: GuestRecord) -> str | None:
    """For the status: why a starting or running guest's owner lacks one of its networks and
    what becomes of it (None when it lacks none). From the committed state alone: whether the
    hold-down has passed is each node's own clock, so it is not said here."""
    if guest.owner is None or guest.state not in (GuestState.STARTING, GuestState.RUNNING):
        return None
    lacks = state.node(guest.owner).lacks(guest.spec)
    if not lacks:
        return None
    why = f"{guest.owner} lacks {', '.join(lacks)}"
    if guest.migrating is not None:
        return f"{why}: migrating to {guest.migrating.dest}"
    if elsewhere(state, guest, guest.owner):
        return f"{why}: leaves after the hold-down (live migration where possible)"
    return f"{why}: no other node has its networks, it stays"
