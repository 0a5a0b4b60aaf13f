"""Arming: whether this node acts disarmed now, the automatic re-arm, the watchdog re-arm
confirmation, and the hold that keeps guests of a disarmed cluster or a frozen node running.

`cluster disarm --for D` commits `Arming(disarmed, version, for_s)`. Each node counts `for_s`
on its own monotonic clock from when it first saw that version disarmed (wall clocks are never
compared; a node that learns it late counts from then, and the leader re-arms first), and acts
armed after it even when it cannot commit anything: a node cut off during a disarm re-arms at
its own deadline. The leader commits the re-arm (`SetArming`, conditional on the version) at
its deadline, so the cluster's record follows.

While this node acts disarmed or is frozen (the `hold`), losing its lease does not destroy its
guests and its watchdog stays quiet: nobody declares it failed or fences it then (`apply`
refuses `DeclareFailed`), so nobody can recover its guests elsewhere, and they may keep running.
Only a disarm this node saw while it held a valid lease (so it applied it about when it
committed) gives the hold and releases its watchdog: a node that learns a disarm late (a
restarted agent replaying its log, a node catching up after a cut) cannot tell how much of it
is left, and counting all of it from then would keep its guests past the cluster's re-arm
(swarm seed 2860); it acts armed, and only its leader duties (no declarations, the re-arm)
count the disarm.

After a re-arm a node's watchdog counts again only once the node committed
`WatchdogRearmed` for the arming version: its agent re-opened the device (`watchdog_armed`,
set by the shell). Fencing trusts a watchdog level only then (core.fencing).
"""

from __future__ import annotations

import math

from haagent.commands import SetArming, WatchdogRearmed
from haagent.core.decisions import Proposal
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import ClusterState, NodeState

AUTOMATIC_REARM_BY = "automatic re-arm at the planned end"


class ArmingClock:
    def __init__(self, settings: AgentSettings, incarnation: str) -> None:
        self._settings = settings
        self._incarnation = incarnation
        # (disarmed version, first seen at, seen while this node held a valid lease)
        self._seen: tuple[int, float, bool] = (-1, math.inf, False)
        # Set by the shell: this agent's watchdog is open and armed (or was never released).
        self.watchdog_armed = True

    def observe(self, state: ClusterState, now: float, lease_valid: bool) -> None:
        """Note when this node first sees a disarmed version and whether it held a valid lease
        then. Call at the start of every pass, before the other methods."""
        arming = state.arming
        if arming.disarmed and self._seen[0] != arming.version:
            self._seen = (arming.version, now, lease_valid)

    def disarmed(self, state: ClusterState, now: float) -> bool:
        """Is the committed disarm still running at `now` (its own clock), counted from when
        this node first saw it? What the leader decides with (no declarations, the re-arm)."""
        arming = state.arming
        if not arming.disarmed:
            return False
        self.observe(state, now, lease_valid=False)  # unobserved: as if learned late
        return now < self._seen[1] + arming.for_s

    def acts_disarmed(self, state: ClusterState, now: float) -> bool:
        """Does this node itself act disarmed (keeps its guests without a lease, releases its
        watchdog)? Only for a disarm it saw while holding a valid lease."""
        return self.disarmed(state, now) and self._seen[2]

    def disarmed_since(self, state: ClusterState) -> float | None:
        """When this node first saw the committed disarm (its clock), None when armed."""
        if not state.arming.disarmed or self._seen[0] != state.arming.version:
            return None
        return self._seen[1]

    def hold(self, state: ClusterState, now: float) -> bool:
        """Keep this node's guests running without a lease (disarmed, or this node frozen)."""
        return self.acts_disarmed(state, now) or state.node(self._settings.node).frozen

    def rearm_when_due(self, out: Outbox, state: ClusterState) -> None:
        """Leader: commit the re-arm once the planned duration passed on this node's clock."""
        arming = state.arming
        if not arming.disarmed or self.disarmed(state, out.now):
            return
        rearm = SetArming(False, 0.0, AUTOMATIC_REARM_BY, "", out.wall(), arming.version)
        key = ProposalKey(ProposalKind.REARM, str(arming.version))
        if out.propose(Proposal(key, rearm, self._settings.commit_timeout_s)):
            out.note("rearm", version=arming.version)

    def confirm_watchdog(self, out: Outbox, state: ClusterState, lease_valid: bool) -> None:
        """Commit that this node armed its watchdog again after a re-arm."""
        me = state.node(self._settings.node)
        arming = state.arming
        if (
            not me.watchdog_released
            or arming.disarmed
            or not self.watchdog_armed
            or not lease_valid
            or me.state is not NodeState.UP
            or me.incarnation != self._incarnation
        ):
            return
        command = WatchdogRearmed(me.name, self._incarnation, arming.version, out.wall())
        key = ProposalKey(ProposalKind.WATCHDOG_REARMED, str(arming.version))
        if out.propose(Proposal(key, command, self._settings.commit_timeout_s)):
            out.note("watchdog_rearmed", node=me.name, version=arming.version)
