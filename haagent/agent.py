"""AgentCore: one node's decisions, deterministic and free of I/O.

The daemon and the simulator drive the very same object:

    step = core.tick(now, consensus_view, local_view)
    ... propose step.proposals, run step.actions (with timeouts) ...
    core.proposal_done(key, outcome, now) / core.action_done(key, result, now)

`tick` is the `decide` of DESIGN.md plus the little memory a node needs between passes. All
times are this node's monotonic clock, passed in; nothing here reads a clock. Each concern
lives in its own module under `haagent.core` and keeps its own memory; this class only
composes them, in this fixed order (each pass, every step sees the same committed state):

1. results of the previous pass that must be committed (fence verdicts)      core.inflight
2. divergence (a replica or config the cluster does not share: no lease)  core.divergence
   lease: join, or heartbeat every `heartbeat_s`                             core.lease
3. leader duties, only as the leader with a valid lease and a trusted replica:
   a. spec sync                                                              core.scheduling
   a'. the automatic re-arm at the end of a disarm                           core.arming
   b. per peer in name order: held (cluster disarmed, or the peer frozen)
                              -> nothing (its silence restarts at the end)
                              diverged or silent and UP -> DeclareFailed     core.failure_detection
                              FAILED        -> the next fencing step         core.fencing
                              FENCED, an attempt in flight -> its verdict    core.fencing
   c. placement, give-up, error, cold start                                  core.scheduling
   d. evacuation by live migration: guests of nodes in maintenance, and     core.migration,
      guests whose owner lacked one of their networks for the hold-down     core.networks
4. this host's network condition, reported when it changed                    core.networks
   this host's guests (on a hypervisor node whose libvirt could be observed):
   destroy what must not run here, release storage no longer needed, then
   start/stop/report what the state gives this node (and stop the guests
   that lacked a network here for the hold-down and cannot live-migrate)     core.guests,
                                                                             core.storage/drbd/raid1
5. the watchdog re-arm confirmation after a disarm                          core.arming
   leave, once a requested clean shutdown has handed everything over         core.lease
   (a frozen node's agent exits at once instead, keeping its guests)
6. whether to pet the watchdog (always while held), whether to release it    core.lease,
                                                                             core.arming

The order is part of the behaviour: proposals go out in it, and the simulator's traces record
it. The lease comes before anything a leader decides so that a heartbeat is never queued behind
a large placement.

Safety rules implemented here (numbers as in DESIGN.md):
1. A start happens only after `GuestStarting` at the current generation committed, and only
   while the lease is valid (core.guests).
2. The lease is extended only by a committed heartbeat/join, from the time it was *sent*
   (core.lease, the only code that extends it).
3. Without a valid lease every protected domain is destroyed (core.guests) and the watchdog is
   not petted while any runs (core.lease).
4. Guests of a failed node move only after `FenceResult(ok)` is committed; in watchdog mode that
   result is proposed only once lease + watchdog timeout + margin has passed since the leader
   last applied the node's heartbeat (core.fencing).
5. Data before compute (core.storage, core.drbd, core.raid1).
7. Every proposal is conditional; an unknown outcome just means "look again next pass"
   (core.inflight: a key in flight is not decided again until its outcome is back).

The public names the shell, the simulator and the tests use are re-exported from here.
"""

from __future__ import annotations

from haagent.core import divergence
from haagent.core.arming import ArmingClock
from haagent.core.decisions import (
    Action,
    ActionResult,
    AttachLeg,
    DemoteReplica,
    DestroyDomain,
    DetachLeg,
    Event,
    LiveMigrate,
    LocalView,
    PromoteReplica,
    Proposal,
    ResumeGuest,
    ResumeReplicaIo,
    RunFence,
    StartGuest,
    StartLeg,
    Step,
    StopGuest,
    event,
)
from haagent.core.digests import config_digest
from haagent.core.divergence import NO_VERDICTS, Verdicts
from haagent.core.failure_detection import FailureDetector
from haagent.core.fencing import Fencing
from haagent.core.guests import GuestReconciler, storage_gates
from haagent.core.inflight import InFlight, Outbox
from haagent.core.keys import ActionKey, ActionKind, ProposalKey, ProposalKind
from haagent.core.lease import LEASE_KINDS, Lease
from haagent.core.networks import NetworkConditions
from haagent.core.raid1 import Raid1Storage
from haagent.core.scheduling import MAX_ASSIGNMENTS_PER_COMMAND, Scheduler
from haagent.core.settings import AgentSettings, NodeSettings
from haagent.model import NodeRole, NodeState, StorageKind
from haagent.ports import ConsensusView, Outcome, OutcomeKind

__all__ = [
    "MAX_ASSIGNMENTS_PER_COMMAND",
    "Action",
    "ActionKey",
    "ActionKind",
    "ActionResult",
    "AgentCore",
    "AgentSettings",
    "AttachLeg",
    "DemoteReplica",
    "DestroyDomain",
    "DetachLeg",
    "Event",
    "LiveMigrate",
    "LocalView",
    "NodeSettings",
    "PromoteReplica",
    "Proposal",
    "ProposalKey",
    "ProposalKind",
    "ResumeGuest",
    "ResumeReplicaIo",
    "RunFence",
    "StartGuest",
    "StartLeg",
    "Step",
    "StopGuest",
    "event",
]


class AgentCore:
    """One node's brain. Not thread-safe: drive it from one task (or one simulated node)."""

    def __init__(self, settings: AgentSettings, incarnation: str, started_at: float) -> None:
        self.settings = settings
        self.incarnation = incarnation
        self.started_at = started_at
        self._wall_offset_s = 0.0
        self._in_flight = InFlight()
        self.lease = Lease(settings, incarnation, started_at)
        self.lease.config_digest = config_digest(settings)
        self.failure_detection = FailureDetector(settings)
        self.fencing = Fencing(settings, self.failure_detection)
        self.scheduling = Scheduler(settings, started_at, self.failure_detection)
        gates = storage_gates(settings)
        raid1 = gates[StorageKind.RAID1]
        assert isinstance(raid1, Raid1Storage)
        self.raid1 = raid1
        self.guests = GuestReconciler(settings, gates)
        self.networks = NetworkConditions(settings, incarnation)
        self.arming = ArmingClock(settings, incarnation)

    # -- inputs ----------------------------------------------------------------------------

    def lease_valid(self, now: float) -> bool:
        return self.lease.valid(now)

    @property
    def lease_until(self) -> float:
        return self.lease.until

    @property
    def next_heartbeat_at(self) -> float:
        return self.lease.next_heartbeat_at

    def in_flight(self) -> frozenset[ProposalKey | ActionKey]:
        return self._in_flight.keys()

    def proposal_done(self, key: ProposalKey, outcome: Outcome, now: float) -> list[Event]:
        """Record a proposal's outcome. Heartbeats and joins extend the lease from the time
        they were sent, and only when accepted: a committed write is the only proof."""
        sent_at = self._in_flight.proposals.pop(key, None)
        if sent_at is None:
            return []
        events = self.lease.committed(key, outcome, sent_at, now)
        if key.kind not in LEASE_KINDS and outcome.kind is OutcomeKind.REFUSED:
            events.append(event("proposal_refused", key=str(key), detail=outcome.detail))
        return events

    def action_done(self, key: ActionKey, result: ActionResult, now: float) -> list[Event]:
        """Record an action's result (a result for a key not in flight is ignored)."""
        action = self._in_flight.actions.pop(key, None)
        if isinstance(action, RunFence):
            events, verdict = self.fencing.done(action, result, now, self._wall(now))
            self._in_flight.queued.append(verdict)
            return events
        if action is None:
            return []
        if isinstance(action, AttachLeg | DetachLeg):
            return self.raid1.action_done(action, result, now)
        return self.guests.action_done(key, action, result, now)

    def set_watchdog_timeout(self, timeout_s: float | None) -> None:
        """The armed watchdog's timeout as its device reports it (None: none the cluster may
        rely on). Set before the first pass: the `Join` commits it."""
        self.lease.watchdog_timeout_s = timeout_s

    def begin_leave(self) -> None:
        """Clean shutdown: stop this node's guests, report them stopped, then commit `Leave`
        so the leader places them elsewhere without fencing this node."""
        self.lease.begin_leave()

    @property
    def leaving(self) -> bool:
        return self.lease.leaving

    def set_wall_offset(self, offset_s: float) -> None:
        """Wall clock = monotonic + offset; used only for display timestamps in commands."""
        self._wall_offset_s = offset_s

    # -- the pass --------------------------------------------------------------------------

    def tick(self, now: float, view: ConsensusView, local: LocalView) -> Step:
        """Decide what to do now (in the order of the module docstring). Call after every
        wake-up; cheap when nothing changed."""
        out = Outbox(now, self._wall_offset_s, self._in_flight)
        state = view.state
        lease_valid = self.lease.valid(now)
        self.arming.observe(state, now, lease_valid)
        disarmed = self.arming.disarmed(state, now)
        # A diverged or incompatible node runs nothing, disarmed or not: it left Raft, so it
        # never learns the re-arm and would hold its guests until its own deadline (swarm seed
        # 119: a restarted agent with a drifted config counted the disarm from its restart).
        hold = self.arming.hold(state, now) and self.lease.diverged is None
        # The clean exit of a frozen node's agent (a restart, an upgrade): its guests stay and
        # it leaves nothing; the shell releases the watchdog and exits.
        frozen_exit = self.lease.leaving and state.node(self.settings.node).frozen

        def nothing_running() -> bool | None:
            return self.guests.no_protected_running(state, local)

        for queued in self._in_flight.queued:
            out.propose(queued)
        self._in_flight.queued.clear()

        self.failure_detection.observe_progress(view.commit_index, now)
        self.failure_detection.observe_incarnations(view.state.nodes, now)
        self.fencing.observe_attempts(view.state.nodes, now)
        verdicts = self._divergence(out, view)
        self.lease.renew(out, state, nothing_running, view.commit_index, view.checkpoint)

        if view.is_leader and lease_valid and self.lease.diverged is None:
            self.scheduling.sync_specs(out, state)
            self.arming.rearm_when_due(out, state)
            for name, record in sorted(state.nodes.items()):
                if name == self.settings.node:
                    continue
                diverged = verdicts.peers.get(name)
                if disarmed or record.frozen:
                    # No declaration, no fence (apply refuses them too); silence counts again
                    # from the re-arm or the thaw.
                    self.failure_detection.hold(name, now)
                elif record.state is NodeState.UP and diverged is not None:
                    self.failure_detection.declare_diverged(out, name, record, diverged)
                elif record.state is NodeState.UP:
                    self.failure_detection.check(
                        out, name, record, view, self.lease.held_continuously_since(now)
                    )
                elif record.state is NodeState.FAILED or record.fence.in_progress_by:
                    # FENCED with an attempt in flight: that attempt still needs a verdict.
                    self.fencing.advance(out, name, view)
            self.scheduling.place(out, view, leaving=self.lease.leaving)
            exclude = frozenset({self.settings.node}) if self.lease.leaving else frozenset()
            network = self.networks.leaving(now, state)
            self.guests.migrations.evacuate(out, state, exclude, network)
        else:
            self.networks.not_leading()
            if view.is_leader and self.lease.diverged is None:
                self.fencing.abandon_dead_attempts(out, state.nodes)

        evacuate: dict[str, str] = {}
        if self.settings.role is NodeRole.HYPERVISOR:
            self.networks.report(out, state, local.missing_networks)
            # Every pass, observed or not: the hold-down is measured without gaps, so a loss
            # and a return hidden by a failed hypervisor observation still reset it.
            evacuate = self.networks.evacuations(out, state)
        if self.settings.role is NodeRole.HYPERVISOR and local.domains is not None:
            self.guests.reconcile(
                out,
                state,
                local,
                lease_valid=lease_valid,
                leaving=self.lease.leaving and not frozen_exit,
                startup_grace=self.lease.in_startup_grace(now),
                hold=hold,
                proven_at=self.lease.until - self.settings.lease_s,
                evacuate=evacuate,
            )

        if not disarmed:
            self.arming.confirm_watchdog(out, state, lease_valid)
        if frozen_exit and not self.lease.left:
            self.lease.left = True
            out.note("frozen_exit", node=self.settings.node)
        if self.lease.leaving and not self.lease.left:
            self.lease.leave(out, state, nothing_running)

        return Step(
            proposals=tuple(out.proposals),
            actions=tuple(out.actions),
            events=tuple(out.events),
            pet_watchdog=hold or self.lease.may_pet(now, nothing_running),
            lease_valid=lease_valid,
            left=self.lease.left,
            diverged=self.lease.diverged,
            release_watchdog=self.arming.acts_disarmed(state, now) or frozen_exit,
        )

    def _divergence(self, out: Outbox, view: ConsensusView) -> Verdicts:
        """Judge the replicas' checkpoints (O(nodes)); a reason to distrust this replica (an
        undecodable command or snapshot, a diverged state, a refused config) is sticky."""
        verdicts = NO_VERDICTS
        if view.checkpoints:
            verdicts = divergence.judge(
                view.state, self.settings.node, len(self.settings.nodes), view.checkpoints
            )
        reason = self.lease.diverged or view.incompatible or verdicts.own
        if reason is not None and self.lease.diverged is None:
            self.lease.diverged = reason
            out.note("diverged", node=self.settings.node, reason=reason)
        return verdicts

    def _wall(self, now: float) -> float:
        return round(now + self._wall_offset_s, 3)
