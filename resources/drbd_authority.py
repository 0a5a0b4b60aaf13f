"""The agent's answer to DRBD's fence-peer handler: a `FenceAuthority` on the consensus port.

The handler asks "make sure the peer cannot write to RESOURCE". A stale local view cannot
prove that (DESIGN rule 2), so every answer that lets DRBD resume I/O rests on a fresh,
conditional commit: `ReplicaOutdated(guest, peer, by=this node, generation)`. The state
machine accepts it only from the guest's owner at that generation while it is up, so an
accepted commit proves, at commit time, that this node owns the guest (the peer does not: its
agent keeps its replica Secondary and demotes it) and that every node knows the peer's
replica is behind (it is never promoted: the core's data-before-compute rule). Then:

- the peer's node is committed as fenced -> `peer-fenced` (DRBD exit 7);
- otherwise -> `peer-outdated` (exit 4);
- refused because the peer owns the guest -> `peer-primary` (exit 6: DRBD outdates this side);
- refused otherwise -> `refused` (exit 1);
- no answer within the commit timeout -> `no-majority` (exit 1; the handler asks again).

This is also what DRBD 8.4 does when this node's replica is promoted while disconnected: it
runs fence-peer on the promoting side first (observed in the test guests), and the new owner
commits the old owner's replica as outdated, which the core already required (fenced or
outdated) before it promoted.

`unfence-peer` (after a resync) commits `ReplicaUpToDate` the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from haagent.commands import Command, ReplicaOutdated, ReplicaUpToDate
from haagent.model import GuestRecord, NodeState, StorageKind
from haagent.ports import Consensus, OutcomeKind
from haagent.resources.drbd_fence import FenceAnswer, FenceRequest, Verdict


class ConsensusFenceAuthority:
    """`FenceAuthority` for node `node`, committing through `consensus`."""

    def __init__(
        self,
        node: str,
        consensus: Consensus,
        commit_timeout_s: float,
        wall: Callable[[], float],
    ) -> None:
        self.node = node
        self._consensus = consensus
        self._timeout_s = commit_timeout_s
        self._wall = wall

    def _guest(self, request: FenceRequest) -> tuple[GuestRecord | None, str]:
        state = self._consensus.view().state
        guests = [
            g
            for g in state.guests.values()
            if g.spec.storage is StorageKind.DRBD and g.spec.resource == request.resource
        ]
        if len(guests) != 1:
            return None, f"{len(guests)} protected guests use DRBD resource {request.resource!r}"
        guest = guests[0]
        peer = guest.spec.peer_of(self.node)
        if peer is None:
            return None, f"{self.node} holds no replica of {guest.name}"
        if request.peer and request.peer != peer:
            return None, (
                f"DRBD's peer {request.peer!r} is not {guest.name}'s other replica host "
                f"{peer!r} (drbd.conf host names must be haagent node names)"
            )
        return guest, ""

    async def _commit(self, command: Command) -> tuple[OutcomeKind, str]:
        outcome = await self._consensus.propose(command, self._timeout_s)
        return outcome.kind, outcome.detail

    async def ensure_peer_cannot_write(self, request: FenceRequest) -> FenceAnswer:
        guest, why = self._guest(request)
        if guest is None:
            return FenceAnswer(Verdict.REFUSED, why)
        peer = guest.spec.peer_of(self.node)
        assert peer is not None
        kind, detail = await self._commit(
            ReplicaOutdated(guest.name, peer, self.node, guest.generation, self._wall())
        )
        state = self._consensus.view().state
        if kind is OutcomeKind.ACCEPTED:
            if state.node(peer).state is NodeState.FENCED:
                return FenceAnswer(Verdict.PEER_FENCED, f"{peer} is fenced; marked outdated")
            return FenceAnswer(Verdict.PEER_OUTDATED, f"{peer}'s replica committed as outdated")
        if kind is OutcomeKind.UNKNOWN:
            return FenceAnswer(Verdict.NO_MAJORITY, f"no commit: {detail}")
        now = state.guests.get(guest.name)
        if now is not None and now.owner == peer:
            return FenceAnswer(
                Verdict.PEER_PRIMARY, f"{peer} owns {guest.name} at generation {now.generation}"
            )
        return FenceAnswer(Verdict.REFUSED, detail)

    async def peer_may_write_again(self, request: FenceRequest) -> FenceAnswer:
        guest, why = self._guest(request)
        if guest is None:
            return FenceAnswer(Verdict.REFUSED, why)
        peer = guest.spec.peer_of(self.node)
        assert peer is not None
        kind, detail = await self._commit(
            ReplicaUpToDate(guest.name, peer, self.node, guest.generation, self._wall())
        )
        if kind is OutcomeKind.ACCEPTED:
            return FenceAnswer(Verdict.UNFENCED, f"{peer}'s replica committed as current")
        if kind is OutcomeKind.UNKNOWN:
            return FenceAnswer(Verdict.NO_MAJORITY, f"no commit: {detail}")
        return FenceAnswer(Verdict.REFUSED, detail)
