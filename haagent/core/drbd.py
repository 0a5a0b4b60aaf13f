"""The DRBD storage gate: data before compute for a guest replicated between two hosts.

DESIGN rule 5: promote only an UpToDate replica that is not known to be outdated, and only
while the peer is connected as Secondary, or is fenced, or is known outdated (then it cannot be
Primary with newer data). A split brain is never resolved here. As the Primary, commit that a
disconnected peer is outdated (what a fence-peer handler does before I/O resumes), so after a
failover every node knows which replica is behind. DRBD's own single-Primary rule is the
second gate (rule 6).

A replica whose state is not known now (`LocalView.replicas_unknown`: events2 down or
restarting, no complete dump yet) is waited on, never acted on: no promotion, no give-up.

Frozen I/O: with `fencing resource-and-stonith` DRBD freezes a Primary that lost its peer and
runs the fence-peer handler; a handler that failed (no majority until its deadline) leaves
I/O frozen for good. As the owner with a valid lease, once the peer is committed as outdated
(this gate commits that itself), the freeze is lifted with `resume-io`: the same fact the
handler's exit 4 would have given DRBD. Never while a handler still runs (its own verdict
will come), never for a freeze that is not fencing's alone (an admin's suspend-io).
"""

from __future__ import annotations

from haagent.commands import Command, ReplicaOutdated, ReplicaUpToDate
from haagent.core.decisions import (
    DemoteReplica,
    LocalView,
    PromoteReplica,
    Proposal,
    ResumeReplicaIo,
    StartLeg,
)
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.storage import StartBlocked, WantedHere
from haagent.model import ClusterState, GuestRecord, NodeState, StorageKind
from haagent.ports import DiskState, ReplicaObservation, ReplicaRole


def _ready(rep: ReplicaObservation | None) -> bool:
    """This host's replica is Primary and sane: the guest may start on it now."""
    return rep is not None and rep.role is ReplicaRole.PRIMARY and not rep.split_brain


# How long a Primary view of a replica this agent demoted counts as events2 lagging behind the
# demote (the start waits for the view) before it is believed again (a demote that failed).
DEMOTE_VIEW_LAG_S = 5.0


class DrbdStorage:
    def __init__(self, node: str, commit_timeout_s: float) -> None:
        self._node = node
        self._commit_timeout_s = commit_timeout_s
        self._demoted_at: dict[str, float] = {}  # resource -> when this agent demoted it

    def _lagging_primary(self, resource: str, rep: ReplicaObservation | None, now: float) -> bool:
        """Is this a Primary view of a replica this agent demoted moments ago? events2 shows a
        demote late (the simulator's DRBD reproduces it): starting on that view finds the
        device Secondary and counts a start failure (swarm seed 11 gave up a guest so). The
        start waits for the view to show Secondary, for at most DEMOTE_VIEW_LAG_S."""
        at = self._demoted_at.get(resource)
        if at is None:
            return False
        if rep is not None and rep.role is ReplicaRole.PRIMARY and now < at + DEMOTE_VIEW_LAG_S:
            return True
        del self._demoted_at[resource]
        return False

    def may_start(
        self, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> StartBlocked | None:
        if guest.spec.resource in local.replicas_unknown:
            return StartBlocked(
                f"the state of DRBD resource {guest.spec.resource!r} is not known now "
                "(events2 not current)",
                False,
            )
        rep = local.replicas.get(guest.spec.resource)
        peer = guest.spec.peer_of(self._node)
        if _ready(rep):
            return None
        if rep is None or peer is None:
            return StartBlocked(f"no DRBD resource {guest.spec.resource!r} on this host", True)
        if rep.split_brain:
            return StartBlocked(
                "DRBD split brain: an admin must resolve it (never automatic)", False
            )
        if self._node in guest.outdated_nodes:
            return StartBlocked("this replica is known to be outdated", True)
        if rep.disk is not DiskState.UP_TO_DATE:
            if rep.disk in (DiskState.OUTDATED, DiskState.INCONSISTENT, DiskState.DISKLESS):
                return StartBlocked(f"local replica is {rep.disk}", True)
            return StartBlocked(f"local replica is {rep.disk}, not known to be current", False)
        if rep.connected and rep.peer_role is ReplicaRole.PRIMARY:
            return StartBlocked(f"the replica on {peer} is still Primary", False)
        if not rep.connected and not (
            state.node(peer).state is NodeState.FENCED or peer in guest.outdated_nodes
        ):
            return StartBlocked(
                f"{peer} is unreachable and neither fenced nor known outdated", False
            )
        return None

    def before_start(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> bool:
        """Promote the local replica (which `may_start` found safe); start once Primary."""
        rep = local.replicas.get(guest.spec.resource)
        if self._lagging_primary(guest.spec.resource, rep, out.now):
            return False
        if _ready(rep):
            return True
        promote = PromoteReplica(guest.name, guest.spec.resource, guest.generation)
        if out.act(promote):
            out.note(
                "promote",
                guest=guest.name,
                resource=guest.spec.resource,
                generation=guest.generation,
            )
        return False

    def start_legs(self, state: ClusterState, guest: GuestRecord) -> tuple[StartLeg, ...]:
        return ()

    def while_running(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> None:
        """As the Primary: commit that a disconnected peer is outdated, and that a
        resynchronised one is current again; lift a freeze a failed fence-peer left."""
        rep = local.replicas.get(guest.spec.resource)
        peer = guest.spec.peer_of(self._node)
        if rep is None or peer is None or rep.role is not ReplicaRole.PRIMARY:
            return
        if (
            rep.fence_frozen
            and not rep.fence_pending
            and not rep.connected
            and peer in guest.outdated_nodes
        ):
            resume = ResumeReplicaIo(guest.name, guest.spec.resource, guest.generation)
            if out.act(resume):
                out.note("resume_io", guest=guest.name, resource=guest.spec.resource, peer=peer)
        if not rep.connected and peer not in guest.outdated_nodes:
            command: Command = ReplicaOutdated(
                guest.name, peer, self._node, guest.generation, out.wall()
            )
            key = ProposalKey(ProposalKind.PEER_OUTDATED, guest.name)
            if out.propose(Proposal(key, command, self._commit_timeout_s)):
                out.note("peer_outdated", guest=guest.name, peer=peer)
        elif (
            rep.connected and rep.peer_disk is DiskState.UP_TO_DATE and peer in guest.outdated_nodes
        ):
            command = ReplicaUpToDate(guest.name, peer, self._node, guest.generation, out.wall())
            key = ProposalKey(ProposalKind.PEER_UP_TO_DATE, guest.name)
            out.propose(Proposal(key, command, self._commit_timeout_s))

    def after_stop(
        self, out: Outbox, state: ClusterState, local: LocalView, wanted_here: WantedHere
    ) -> None:
        """Demote a Primary replica whose guest does not run here and is not about to start
        here, so the other host can be promoted."""
        if not local.replicas or local.domains is None:
            return
        by_resource = {
            g.spec.resource: g for g in state.guests.values() if g.spec.storage is StorageKind.DRBD
        }
        for resource, rep in sorted(local.replicas.items()):
            if rep.role is not ReplicaRole.PRIMARY:
                continue
            guest = by_resource.get(resource)
            if guest is None:
                continue  # not ours to manage
            domain = local.domains.get(guest.spec.domain)
            if domain is not None and domain.running:
                continue  # stop or destroy it first; demote on a later pass
            if wanted_here(guest):
                continue
            if out.act(DemoteReplica(resource, "guest not running here")):
                self._demoted_at[resource] = out.now
                out.note("demote", resource=resource)
