"""Network conditions: what this node reports missing, and which of its guests leave for it.

Two duties, both local to this node and both outside the lease (a lost bridge is a placement
fact; isolation from the majority is the lease's business, never this module's):

1. Report: when the interfaces the shell found missing differ from this node's committed
   `missing_networks`, propose one `NetworkCondition` (one in flight at a time). A steady
   host proposes nothing.
2. Hold-down and evacuation: a guest this node owns that is starting or running and needs a
   network the *committed* condition says is missing here is handed over once that has been
   true for `network_hold_down_s` without a break (this node's monotonic clock), and only if
   some other up hypervisor out of maintenance allows the guest and lacks none of its
   networks. Handing over is the stop-and-restart of maintenance: the guest reconciler stops
   it, commits it stopped, and the leader's placement (which skips nodes lacking a guest's
   networks) gives it a new owner. With nowhere to go it stays and `network_lost_stays` is
   reported (once per loss), the alerting path.

Live migration is the better policy once it exists: `evacuations` is the hook. It returns
guest -> reason; a migrating policy would ask for a migration of those guests instead of a
stop, keeping the same hold-down and the same "somewhere better exists" rule.
"""

from __future__ import annotations

from haagent.commands import NetworkCondition
from haagent.core.decisions import Proposal
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import ClusterState, GuestRecord, GuestState, NodeRole, NodeState

NETWORK_KEY = ProposalKey(ProposalKind.NETWORK_CONDITION)


class NetworkConditions:
    def __init__(self, settings: AgentSettings, incarnation: str) -> None:
        self._settings = settings
        self._incarnation = incarnation
        self._lacking_since: dict[str, float] = {}  # guest -> when its loss was first seen
        self._stays: dict[str, tuple[str, ...]] = {}  # guest -> networks reported as stuck

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
        me = state.node(s.node)
        leave: dict[str, str] = {}
        lacking: set[str] = set()
        for guest in state.guests_of(s.node):
            if guest.state not in (GuestState.STARTING, GuestState.RUNNING):
                continue
            lacks = me.lacks(guest.spec)
            if not lacks:
                continue
            lacking.add(guest.name)
            since = self._lacking_since.setdefault(guest.name, out.now)
            if out.now - since < s.network_hold_down_s:
                continue
            why = f"{s.node} lacks {', '.join(lacks)}"
            if _elsewhere(state, guest, s.node):
                leave[guest.name] = why
            elif self._stays.get(guest.name) != lacks:
                self._stays[guest.name] = lacks
                out.note("network_lost_stays", guest=guest.name, why=f"{why}; no node has them")
        for name in set(self._lacking_since) - lacking:
            del self._lacking_since[name]
            self._stays.pop(name, None)
        return leave


def _elsewhere(state: ClusterState, guest: GuestRecord, here: str) -> bool:
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
