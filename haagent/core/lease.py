"""Lease: join, heartbeat, leave, startup grace, and when to pet the watchdog.

The only code that may extend the lease (DESIGN rule 2): a heartbeat or join the cluster
*accepted* extends it to `lease_s` after the moment it was *sent*, measured on this node's
monotonic clock. A leader's belief, a local read or a late answer never does: a committed write
is the only proof of being current. Losing the lease is what makes the guest reconciliation
destroy every protected domain here (rule 3); this module decides only when to stop petting
the watchdog so that a hung agent still gets its host reset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from haagent.commands import Heartbeat, Join, Leave
from haagent.core.decisions import Event, Proposal, event
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import Checkpoint, ClusterState, GuestState, NodeState
from haagent.ports import Outcome, OutcomeKind
from haagent.statemachine import CONFIG_DRIFT

# Tells whether no protected domain runs here: True, False, or None when unknown (the
# hypervisor could not be observed). Called only when the answer matters, because it looks at
# every local domain.
NothingRunning = Callable[[], bool | None]

LEASE_KINDS = (ProposalKind.HEARTBEAT, ProposalKind.JOIN)


class Lease:
    """This agent process's membership and lease. Not thread-safe, like the whole core."""

    def __init__(self, settings: AgentSettings, incarnation: str, started_at: float) -> None:
        self._settings = settings
        self._incarnation = incarnation
        self._started_at = started_at
        self.until = -math.inf
        # Since when the lease has been valid without a gap, on this node's clock (+inf while
        # it is not valid). A lapse is noticed at the next extension: `until` only grows there.
        self.held_since = math.inf
        self._ever_leased = False
        self._next_heartbeat_at = -math.inf
        self._last_retry_at = -math.inf
        self._heartbeat_counter = 0
        self.leaving = False  # a clean shutdown was asked for
        self.left = False  # ... and `Leave` committed (or there was nothing to leave)
        # The armed watchdog's timeout as its device reports it, committed with `Join` so that
        # whoever fences this node waits on it; None: no watchdog the cluster may rely on.
        self.watchdog_timeout_s: float | None = None
        # The digest of this node's cluster-wide config, committed with `Join`.
        self.config_digest: str | None = None
        # Why this replica or its config cannot be trusted (sticky for the process): it then
        # neither joins nor heartbeats, so it holds no lease and falls silent (issue 8 item 6).
        self.diverged: str | None = None

    def valid(self, now: float) -> bool:
        return now < self.until

    def in_startup_grace(self, now: float) -> bool:
        """A new agent process has not had time to prove it still holds the lease its
        predecessor held. Until then it neither starts nor destroys anything."""
        return not self._ever_leased and now < self._started_at + self._settings.lease_s

    def renew(
        self,
        out: Outbox,
        state: ClusterState,
        nothing_running: NothingRunning,
        applied_index: int,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        """Join when not a member with this incarnation, else heartbeat every `heartbeat_s`,
        or sooner after a heartbeat whose outcome is unknown (`committed`).

        Both carry `applied_index` (this replica's, from the consensus view) so the leader
        can tell a node whose replica stopped advancing from a live one.

        A node the cluster declared failed or fenced joins again only once nothing protected
        runs here (the local pass destroys it first, having no lease): it comes back clean.
        While a fence of it is in progress it does not join at all: the fence may switch this
        host off whatever it does, so it waits for the committed verdict (a successful fence
        makes it a fenced node that rejoins as such after power-on; a failed one lets it join),
        also when another proof (a watchdog deadline, an admin) made it fenced meanwhile.
        """
        s = self._settings
        if self.diverged is not None:
            return  # no lease for a replica or config the cluster does not share
        me = state.node(s.node)
        joined = me.state is NodeState.UP and me.incarnation == self._incarnation
        if self.leaving and not joined:
            return
        if not joined:
            if out.in_flight.proposing(ProposalKind.JOIN):
                return
            if (
                me.state in (NodeState.FAILED, NodeState.FENCED)
                and me.fence.in_progress_by is not None
            ):
                return  # `apply` refuses it until the fence's verdict commits: wait for it
            clean = nothing_running()
            if me.state in (NodeState.FAILED, NodeState.FENCED) and not clean:
                return
            if clean is None:
                return
            join = Join(
                node=s.node,
                incarnation=self._incarnation,
                role=s.role,
                clean=clean,
                at=out.wall(),
                watchdog_timeout_s=self.watchdog_timeout_s,
                applied_index=applied_index,
                config_digest=self.config_digest,
            )
            out.propose(_proposal(ProposalKind.JOIN, self._incarnation, join, s.lease_s))
            out.note("join", node=s.node, was=str(me.state), clean=clean)
            return
        if out.now >= self._next_heartbeat_at:
            self._heartbeat_counter += 1
            self._next_heartbeat_at = out.now + s.heartbeat_s
            heartbeat = Heartbeat(
                node=s.node,
                incarnation=self._incarnation,
                applied_index=applied_index,
                checkpoint=checkpoint,
            )
            out.propose(
                _proposal(
                    ProposalKind.HEARTBEAT, str(self._heartbeat_counter), heartbeat, s.lease_s
                )
            )

    @property
    def next_heartbeat_at(self) -> float:
        """When `renew` sends the next heartbeat (-inf: at the next pass), for the shell's
        deadlines: a retry brought forward must get a pass of its own."""
        return self._next_heartbeat_at

    def _retry_heartbeat_soon(self, now: float) -> None:
        """Heartbeat now, not at the next period: at most one such retry per quarter period
        (a burst of unknown outcomes must not become a burst of heartbeats)."""
        at = max(now, self._last_retry_at + self._settings.heartbeat_s / 4)
        if at < self._next_heartbeat_at:
            self._next_heartbeat_at = self._last_retry_at = at

    def begin_leave(self) -> None:
        self.leaving = True

    def leave(self, out: Outbox, state: ClusterState, nothing_running: NothingRunning) -> None:
        """Commit `Leave` once this node's guests are stopped and reported stopped, so the
        leader places them elsewhere without fencing this node."""
        s = self._settings
        if self.diverged is not None:
            # Its `Leave` could never commit (it left Raft): once its guests are gone there is
            # nothing to hand over, and the cluster fences it for its silence.
            self.left = nothing_running() is True
            return
        me = state.node(s.node)
        if me.state is not NodeState.UP or me.incarnation != self._incarnation:
            self.left = True  # not a member: nothing to hand over
            return
        active = [
            g
            for g in state.guests_of(s.node)
            if g.state in (GuestState.STARTING, GuestState.RUNNING, GuestState.STOPPING)
        ]
        if active or nothing_running() is not True:
            return
        leave = Leave(s.node, self._incarnation, out.wall())
        out.propose(_proposal(ProposalKind.LEAVE, self._incarnation, leave, s.commit_timeout_s))

    def held_continuously_since(self, now: float) -> float:
        """When the current unbroken stretch of valid lease began (+inf without a lease).

        Failure detection counts a peer's silence only from here: before it, this node could
        not commit, so nobody could have broken the silence through it.
        """
        return self.held_since if self.valid(now) else math.inf

    def committed(
        self, key: ProposalKey, outcome: Outcome, sent_at: float, now: float
    ) -> list[Event]:
        """Take the outcome of one of this module's proposals (others are ignored)."""
        events: list[Event] = []
        if key.kind is ProposalKind.LEAVE and outcome.accepted:
            self.left = True
            events.append(event("left", node=self._settings.node))
        if key.kind in LEASE_KINDS:
            if outcome.accepted:
                if not self.valid(now):
                    # (Re)gained, counted from when this node learned it (not from the send:
                    # the stretch in between had no proof of being current).
                    self.held_since = now
                self.until = max(self.until, sent_at + self._settings.lease_s)
                if not self._ever_leased:
                    events.append(event("lease_acquired", node=self._settings.node))
                self._ever_leased = True
            elif (
                outcome.kind is OutcomeKind.UNKNOWN
                and key.kind is ProposalKind.HEARTBEAT
                and now - sent_at < self._settings.lease_s
            ):
                # Lost with a dead leader: pysyncobj fails what it forwarded to the old leader
                # once it learns the new one. Waiting a whole period for the next heartbeat
                # after the election cost the survivors their lease in 3 of 5 leader kills
                # (`balanced`; tests/integration/test_leader_death.py). A time-out (the commit
                # timeout is at least the lease) comes too late to save anything: no retry.
                self._retry_heartbeat_soon(now)
            elif outcome.kind is OutcomeKind.REFUSED:
                events.append(event("heartbeat_refused", detail=outcome.detail))
                if key.kind is ProposalKind.JOIN and outcome.detail.startswith(CONFIG_DRIFT):
                    # Committed, so current: the up nodes joined with another config.
                    self.diverged = outcome.detail
                    events.append(event("diverged", node=self._settings.node, reason=self.diverged))
        return events

    def may_pet(self, now: float, nothing_running: NothingRunning) -> bool:
        """Pet the watchdog while the lease is valid, or while nothing protected runs here.

        Not petting with no guest running would turn every loss of quorum into a reboot loop
        of the surviving hosts without protecting anything. A failed observation counts as
        "may be running": a hung libvirt must not keep the watchdog quiet.
        """
        if self.valid(now):
            return True
        if self.in_startup_grace(now):
            return True
        return nothing_running() is True


def _proposal(
    kind: ProposalKind, subject: str, command: Heartbeat | Join | Leave, timeout_s: float
) -> Proposal:
    return Proposal(ProposalKey(kind, subject), command, timeout_s)
