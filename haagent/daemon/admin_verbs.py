"""The admin verbs of issue 12 part 5 in the daemon: guest cleanup and move, cluster
disarm/arm, node freeze/thaw (`haagent.api_admin` routes them here).

Contract, as for the older verbs (`haagent.daemon.admin`): each is proposed through Raft
conditional on the version of the record this agent's view shows (so a late re-delivery never
undoes a newer decision), unknown names are refused before proposing (404), and the answer is
the replicated command's outcome. Who: the client's `by` (the CLI sends USER@HOST) and the
proposing agent, "alice@laptop via api@n1"; when: this agent's wall clock; why: `reason`.

A move is checked here first for what `apply` cannot see (the config's capacities and the
anti-affinity of the guests on the target), so the admin reads the reason at once instead of a
guest left waiting; `apply` checks the rest again on the committed state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from haagent.api import ApiError
from haagent.commands import CleanupGuest, MoveGuest, SetArming, SetFrozen
from haagent.config import Config
from haagent.consensus import RaftConsensus
from haagent.core.settings import AgentSettings
from haagent.model import ClusterState
from haagent.placement import committed_mib, occupies
from haagent.ports import Outcome, OutcomeKind
from haagent.statemachine_admin import move_refusal

log = logging.getLogger("haagent")


class AdminVerbService:
    def __init__(
        self,
        config: Config,
        settings: AgentSettings,
        consensus: Callable[[], RaftConsensus | None],
    ) -> None:
        self._config = config
        self._s = settings
        self._consensus = consensus

    def _serving(self) -> RaftConsensus:
        consensus = self._consensus()
        if consensus is None:
            raise ApiError(503, "the agent is starting")
        return consensus

    def _who(self, by: str) -> str:
        me = f"api@{self._config.node}"
        return f"{by} via {me}" if by else me

    def _known_node(self, node: str) -> None:
        if node not in self._config.nodes:
            raise ApiError(404, f"unknown node {node!r}")

    async def cleanup_guest(self, guest: str, by: str, reason: str) -> Outcome:
        consensus = self._serving()
        record = consensus.view().state.guests.get(guest)
        if record is None:
            raise ApiError(404, f"unknown guest {guest!r}")
        who = self._who(by)
        command = CleanupGuest(guest, who, reason, time.time(), record.admin_version)
        log.info("admin: %s clears the failure history of %s (%s)", who, guest, reason or "-")
        return await consensus.propose(command, self._s.commit_timeout_s)

    async def move_guest(self, guest: str, node: str, by: str, reason: str) -> Outcome:
        consensus = self._serving()
        state = consensus.view().state
        record = state.guests.get(guest)
        if record is None:
            raise ApiError(404, f"unknown guest {guest!r}")
        self._known_node(node)
        if node != record.owner:
            why = move_refusal(state, guest, node) or self._room_refusal(state, guest, node)
            if why:
                return Outcome(OutcomeKind.REFUSED, why)
        who = self._who(by)
        command = MoveGuest(guest, node, who, reason, time.time(), record.admin_version)
        log.info("admin: %s moves %s to %s (%s)", who, guest, node, reason or "-")
        return await consensus.propose(command, self._s.commit_timeout_s)

    def _room_refusal(self, state: ClusterState, guest: str, node: str) -> str:
        """Capacity and anti-affinity on `node` (the rules of `haagent.placement.plan`)."""
        spec = state.guests[guest].spec
        free = self._s.capacity_mib.get(node, 0) - committed_mib(state, node)
        if free < spec.memory_mib:
            return f"{node} has {free} MiB free, {guest} needs {spec.memory_mib} MiB"
        if spec.anti_affinity:
            for other in state.guests_of(node):
                if other.spec.anti_affinity == spec.anti_affinity and occupies(other):
                    return (
                        f"anti-affinity: {node} hosts {other.name} of group {spec.anti_affinity!r}"
                    )
        return ""

    async def set_arming(self, disarm: bool, for_s: float, by: str, reason: str) -> Outcome:
        consensus = self._serving()
        version = consensus.view().state.arming.version
        who = self._who(by)
        command = SetArming(disarm, for_s, who, reason, time.time(), version)
        if disarm:
            log.warning("admin: %s disarms the cluster for %gs (%s)", who, for_s, reason or "-")
        else:
            log.warning("admin: %s arms the cluster (%s)", who, reason or "-")
        return await consensus.propose(command, self._s.commit_timeout_s)

    async def set_frozen(self, node: str, on: bool, by: str, reason: str) -> Outcome:
        consensus = self._serving()
        self._known_node(node)
        version = consensus.view().state.node(node).admin_version
        who = self._who(by)
        command = SetFrozen(node, on, who, reason, time.time(), version)
        verb = "freezes" if on else "thaws"
        log.warning("admin: %s %s %s (%s)", who, verb, node, reason or "-")
        return await consensus.propose(command, self._s.commit_timeout_s)
