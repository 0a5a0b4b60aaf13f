"""AgentCore: one node's decisions, deterministic and free of I/O.

The daemon and the simulator drive the very same object:

    step = core.tick(now, consensus_view, local_view)
    ... propose step.proposals, run step.actions (with timeouts) ...
    core.proposal_done(key, outcome, now) / core.action_done(key, result, now)

`tick` is the `decide` of DESIGN.md plus the little memory a node needs between passes: its
lease, what it has in flight, fence back-off, when it first saw a peer. All times are this
node's monotonic clock, passed in; nothing here reads a clock.

Safety rules implemented here (numbers as in DESIGN.md):
1. A start happens only after `GuestStarting` at the current generation committed, and only
   while the lease is valid.
2. The lease is extended only by a committed heartbeat/join, from the time it was *sent*.
3. Without a valid lease every protected domain is destroyed and the watchdog is not petted
   while any runs.
4. Guests of a failed node move only after `FenceResult(ok)` is committed; in watchdog mode that
   result is proposed only once lease + watchdog timeout + margin has passed since the leader
   last applied the node's heartbeat.
7. Every proposal is conditional; an unknown outcome just means "look again next pass".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from haagent.commands import (
    AssignGuests,
    Assignment,
    Command,
    DeclareFailed,
    DefineGuest,
    FenceResult,
    FenceStarted,
    GuestError,
    GuestRunning,
    GuestStarting,
    GuestStopped,
    Heartbeat,
    Join,
    Leave,
    ReplicaOutdated,
    ReplicaUpToDate,
)
from haagent.model import (
    ClusterState,
    DesiredState,
    FailureEvidence,
    FenceMethod,
    GuestRecord,
    GuestSpec,
    GuestState,
    NodeRole,
    NodeState,
    StorageKind,
)
from haagent.placement import Unplaced, plan
from haagent.ports import (
    ConsensusView,
    DiskState,
    DomainObservation,
    FenceOutcome,
    Outcome,
    OutcomeKind,
    ReplicaObservation,
    ReplicaRole,
)
from haagent.timing import DEFAULT_LIMITS, DEFAULT_TIMING

# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSettings:
    """What every agent knows about one configured node."""

    role: NodeRole
    memory_mib: int = 0
    fence_method: FenceMethod | None = None  # None: nothing to fence (a witness)
    watchdog_timeout_s: float = 0.0


@dataclass(frozen=True)
class AgentSettings:
    """The parts of the config the core decides with (no secrets, no paths)."""

    cluster: str
    node: str
    nodes: Mapping[str, NodeSettings]
    guests: tuple[GuestSpec, ...] = ()
    # Defaults from haagent.timing, the one place that holds them (config.py reads the same).
    heartbeat_s: float = DEFAULT_TIMING.heartbeat_s
    lease_s: float = DEFAULT_TIMING.lease_s
    failure_timeout_s: float = DEFAULT_TIMING.failure_timeout_s
    stop_grace_s: float = DEFAULT_TIMING.stop_grace_s
    fence_timeout_s: float = DEFAULT_TIMING.fence_timeout_s
    fence_retry_initial_s: float = DEFAULT_TIMING.fence_retry_initial_s
    fence_retry_max_s: float = DEFAULT_TIMING.fence_retry_max_s
    watchdog_margin_s: float = DEFAULT_TIMING.watchdog_margin_s
    commit_timeout_s: float = DEFAULT_TIMING.commit_timeout_s
    start_timeout_s: float = DEFAULT_TIMING.start_timeout_s
    shutdown_timeout_s: float = DEFAULT_TIMING.shutdown_timeout_s
    max_concurrent_starts: int = DEFAULT_LIMITS.max_concurrent_starts
    max_start_failures: int = DEFAULT_LIMITS.max_start_failures
    failure_reset_s: float = DEFAULT_LIMITS.failure_reset_s
    max_relocations: int = DEFAULT_LIMITS.max_relocations
    initial_placement_wait_s: float = DEFAULT_TIMING.initial_placement_wait_s

    @property
    def role(self) -> NodeRole:
        return self.nodes[self.node].role

    @property
    def capacity_mib(self) -> dict[str, int]:
        return {name: ns.memory_mib for name, ns in self.nodes.items()}


# --- what the core asks the shell to do ------------------------------------------------------


@dataclass(frozen=True)
class StartGuest:
    guest: str
    domain: str
    generation: int

    @property
    def key(self) -> str:
        return f"start:{self.guest}"


@dataclass(frozen=True)
class StopGuest:
    """Graceful stop (admin disable): shutdown, destroy after `timeout_s`."""

    guest: str
    domain: str
    generation: int
    timeout_s: float

    @property
    def key(self) -> str:
        return f"stop:{self.guest}"


@dataclass(frozen=True)
class DestroyDomain:
    """Hard power-off of a protected domain that must not run here."""

    domain: str
    reason: str
    generation: int | None = None  # of the instance destroyed, when its metadata says

    @property
    def key(self) -> str:
        return f"destroy:{self.domain}"


@dataclass(frozen=True)
class PromoteReplica:
    """Make this host's side of the guest's DRBD resource Primary (before starting it)."""

    guest: str
    resource: str
    generation: int

    @property
    def key(self) -> str:
        return f"promote:{self.resource}"


@dataclass(frozen=True)
class DemoteReplica:
    """Make this host's side Secondary again (the guest is not running here any more)."""

    resource: str
    reason: str

    @property
    def key(self) -> str:
        return f"demote:{self.resource}"


@dataclass(frozen=True)
class RunFence:
    node: str
    epoch: int

    @property
    def key(self) -> str:
        return f"fence:{self.node}"


Action = StartGuest | StopGuest | DestroyDomain | RunFence | PromoteReplica | DemoteReplica


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    detail: str = ""
    fence: FenceOutcome | None = None


@dataclass(frozen=True)
class Proposal:
    key: str
    command: Command
    timeout_s: float


@dataclass(frozen=True)
class Event:
    """A structured record of a decision, for logs, metrics and simulator traces."""

    name: str
    data: tuple[tuple[str, str | int | float | bool | None], ...] = ()

    def __str__(self) -> str:
        fields = " ".join(f"{k}={v}" for k, v in self.data)
        return f"{self.name} {fields}".strip()


def event(name: str, **data: str | int | float | bool | None) -> Event:
    return Event(name, tuple(sorted(data.items())))


@dataclass(frozen=True)
class LocalView:
    """This host's hypervisor as last observed. `domains` None: the observation failed."""

    domains: Mapping[str, DomainObservation] | None
    observed_at: float
    replicas: Mapping[str, ReplicaObservation] = field(default_factory=dict)  # by resource


@dataclass(frozen=True)
class Step:
    proposals: tuple[Proposal, ...]
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    pet_watchdog: bool
    lease_valid: bool
    left: bool = False  # a requested leave has committed; the agent may exit

    @property
    def reason(self) -> str:
        """One line saying why this pass did what it did (empty when it did nothing)."""
        return "; ".join(str(e) for e in self.events)


# --- the core ----------------------------------------------------------------------------------


@dataclass
class _Memory:
    lease_until: float = -math.inf
    ever_leased: bool = False
    next_heartbeat_at: float = -math.inf
    heartbeat_counter: int = 0
    proposals: dict[str, float] = field(default_factory=dict)  # key -> sent at
    actions: dict[str, Action] = field(default_factory=dict)
    # node -> (seq, when this core first saw that sequence without having applied it itself).
    # One entry per node: an older sequence is never asked for again once a newer one is seen.
    first_seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    fence_next_at: dict[str, float] = field(default_factory=dict)
    fence_failures: dict[str, int] = field(default_factory=dict)
    fence_launched: set[tuple[str, int, int]] = field(default_factory=set)
    started: dict[str, tuple[int, float]] = field(default_factory=dict)  # guest -> (gen, at)
    queued: list[Proposal] = field(default_factory=list)  # results to report next pass
    unplaced: dict[str, str] = field(default_factory=dict)
    leaving: bool = False
    left: bool = False
    waiting: dict[str, str] = field(default_factory=dict)  # guest -> why its start waits
    start_failed: dict[str, tuple[int, str]] = field(default_factory=dict)  # guest -> gen, why
    # Instances this agent stopped or destroyed itself (domain -> generation): not crashes.
    stopped_here: dict[str, int] = field(default_factory=dict)
    # Instances this agent process has seen running (guest -> generation, first seen at).
    seen_running: dict[str, tuple[int, float]] = field(default_factory=dict)
    # (guests map, node states) of the last plan that had nothing to do.
    idle_plan: tuple[Mapping[str, GuestRecord], tuple[object, ...]] | None = None


class AgentCore:
    """One node's brain. Not thread-safe: drive it from one task (or one simulated node)."""

    def __init__(self, settings: AgentSettings, incarnation: str, started_at: float) -> None:
        self.settings = settings
        self.incarnation = incarnation
        self.started_at = started_at
        self._m = _Memory()
        self._wall_offset = 0.0
        self._config_domains = frozenset(spec.domain for spec in settings.guests)
        self._spec_checked: dict[str, GuestRecord] = {}

    # -- inputs ----------------------------------------------------------------------------

    def lease_valid(self, now: float) -> bool:
        return now < self._m.lease_until

    @property
    def lease_until(self) -> float:
        return self._m.lease_until

    def in_flight(self) -> frozenset[str]:
        return frozenset(self._m.proposals) | frozenset(self._m.actions)

    def proposal_done(self, key: str, outcome: Outcome, now: float) -> list[Event]:
        """Record a proposal's outcome. Heartbeats and joins extend the lease from the time
        they were sent, and only when accepted: a committed write is the only proof."""
        sent_at = self._m.proposals.pop(key, None)
        events: list[Event] = []
        if sent_at is None:
            return events
        if key.startswith("leave:") and outcome.accepted:
            self._m.left = True
            events.append(event("left", node=self.settings.node))
        if key.startswith(("hb:", "join:")):
            if outcome.accepted:
                self._m.lease_until = max(self._m.lease_until, sent_at + self.settings.lease_s)
                if not self._m.ever_leased:
                    events.append(event("lease_acquired", node=self.settings.node))
                self._m.ever_leased = True
            elif outcome.kind is OutcomeKind.REFUSED:
                events.append(event("heartbeat_refused", detail=outcome.detail))
        elif outcome.kind is OutcomeKind.REFUSED:
            events.append(event("proposal_refused", key=key, detail=outcome.detail))
        return events

    def action_done(self, key: str, result: ActionResult, now: float) -> list[Event]:
        action = self._m.actions.pop(key, None)
        events: list[Event] = []
        if isinstance(action, StartGuest):
            if result.ok:
                self._m.started[action.guest] = (action.generation, now)
            else:
                # Reported (and counted against the limit) by the next pass, which knows the
                # guest's failure count; until then it is not started again.
                events.append(event("start_failed", guest=action.guest, detail=result.detail))
                self._m.start_failed[action.guest] = (action.generation, result.detail)
        elif isinstance(action, StopGuest | DestroyDomain):
            if not result.ok:
                events.append(event("stop_failed", key=key, detail=result.detail))
            elif action.generation is not None:
                self._m.stopped_here[action.domain] = action.generation
        elif isinstance(action, RunFence):
            outcome = result.fence or FenceOutcome(ok=False, detail=result.detail)
            if outcome.ok:
                self._m.fence_failures.pop(action.node, None)
            else:
                failures = self._m.fence_failures.get(action.node, 0) + 1
                self._m.fence_failures[action.node] = failures
                delay = min(
                    self.settings.fence_retry_initial_s * 2 ** (failures - 1),
                    self.settings.fence_retry_max_s,
                )
                self._m.fence_next_at[action.node] = now + delay
            events.append(
                event("fence_done", node=action.node, ok=outcome.ok, detail=outcome.detail)
            )
            self._m.queued.append(
                Proposal(
                    f"fence_result:{action.node}",
                    FenceResult(
                        node=action.node,
                        epoch=action.epoch,
                        ok=outcome.ok,
                        method=FenceMethod.AGENT,
                        detail=outcome.detail,
                        at=self._wall(now),
                    ),
                    self.settings.commit_timeout_s,
                )
            )
        return events

    def begin_leave(self) -> None:
        """Clean shutdown: stop this node's guests, report them stopped, then commit `Leave`
        so the leader places them elsewhere without fencing this node."""
        self._m.leaving = True

    @property
    def leaving(self) -> bool:
        return self._m.leaving

    def set_wall_offset(self, offset_s: float) -> None:
        """Wall clock = monotonic + offset; used only for display timestamps in commands."""
        self._wall_offset = offset_s

    # -- the pass --------------------------------------------------------------------------

    def tick(self, now: float, view: ConsensusView, local: LocalView) -> Step:
        """Decide what to do now. Call after every wake-up; cheap when nothing changed."""
        proposals: list[Proposal] = []
        actions: list[Action] = []
        events: list[Event] = []
        state = view.state
        lease_valid = self.lease_valid(now)

        for queued in self._m.queued:
            self._propose(proposals, queued, now)
        self._m.queued.clear()

        self._membership(now, state, local, proposals, events)
        if view.is_leader and lease_valid and view.incompatible is None:
            self._lead(now, view, proposals, actions, events)
        if self.settings.role is NodeRole.HYPERVISOR and local.domains is not None:
            self._reconcile_local(now, state, local, lease_valid, proposals, actions, events)

        if self._m.leaving and not self._m.left:
            self._leave(now, state, local, proposals)

        for action in actions:
            self._m.actions[action.key] = action
        return Step(
            proposals=tuple(proposals),
            actions=tuple(actions),
            events=tuple(events),
            pet_watchdog=self._may_pet(now, state, local, lease_valid),
            lease_valid=lease_valid,
            left=self._m.left,
        )

    def _leave(
        self, now: float, state: ClusterState, local: LocalView, proposals: list[Proposal]
    ) -> None:
        me = state.node(self.settings.node)
        if me.state is not NodeState.UP or me.incarnation != self.incarnation:
            self._m.left = True  # not a member: nothing to hand over
            return
        active = [
            g
            for g in state.guests_of(self.settings.node)
            if g.state in (GuestState.STARTING, GuestState.RUNNING, GuestState.STOPPING)
        ]
        if active or self._no_protected_running(state, local) is not True:
            return
        self._propose(
            proposals,
            Proposal(
                f"leave:{self.incarnation}",
                Leave(self.settings.node, self.incarnation, self._wall(now)),
                self.settings.commit_timeout_s,
            ),
            now,
        )

    # -- membership: join, heartbeat -------------------------------------------------------

    def _membership(
        self,
        now: float,
        state: ClusterState,
        local: LocalView,
        proposals: list[Proposal],
        events: list[Event],
    ) -> None:
        me = state.node(self.settings.node)
        joined = me.state is NodeState.UP and me.incarnation == self.incarnation
        if self._m.leaving and not joined:
            return
        if not joined:
            if any(k.startswith("join:") for k in self._m.proposals):
                return
            clean = self._no_protected_running(state, local)
            if me.state in (NodeState.FAILED, NodeState.FENCED) and not clean:
                return  # the local pass destroys them first (no lease), then we rejoin clean
            if clean is None:
                return
            self._propose(
                proposals,
                Proposal(
                    f"join:{self.incarnation}",
                    Join(
                        node=self.settings.node,
                        incarnation=self.incarnation,
                        role=self.settings.role,
                        clean=clean,
                        at=self._wall(now),
                    ),
                    self.settings.lease_s,
                ),
                now,
            )
            events.append(event("join", node=self.settings.node, was=str(me.state), clean=clean))
            return
        if now >= self._m.next_heartbeat_at:
            self._m.heartbeat_counter += 1
            self._m.next_heartbeat_at = now + self.settings.heartbeat_s
            self._propose(
                proposals,
                Proposal(
                    f"hb:{self._m.heartbeat_counter}",
                    Heartbeat(node=self.settings.node, incarnation=self.incarnation),
                    self.settings.lease_s,
                ),
                now,
            )

    # -- leader duties ---------------------------------------------------------------------

    def _lead(
        self,
        now: float,
        view: ConsensusView,
        proposals: list[Proposal],
        actions: list[Action],
        events: list[Event],
    ) -> None:
        state = view.state
        s = self.settings
        for spec in s.guests:
            current = state.guests.get(spec.name)
            if current is not None and self._spec_checked.get(spec.name) is current:
                continue  # this very record was compared before (records are immutable)
            if current is not None and current.spec == spec:
                self._spec_checked[spec.name] = current
                continue
            # Missing or changed in the config: (re)define it.
            self._propose(
                proposals,
                Proposal(
                    f"define:{spec.name}",
                    DefineGuest(spec, self._wall(now)),
                    s.commit_timeout_s,
                ),
                now,
            )

        for name, rec in sorted(state.nodes.items()):
            if name == s.node:
                continue
            if rec.state is NodeState.UP:
                silent_s = now - self._silence_start(name, rec.heartbeat_seq, view, now)
                if silent_s > s.failure_timeout_s:
                    detail = (
                        f"no heartbeat for {silent_s:.2f}s (> {s.failure_timeout_s}s) "
                        f"after #{rec.heartbeat_seq}"
                    )
                    evidence = FailureEvidence(
                        declared_by=s.node,
                        last_heartbeat_seq=rec.heartbeat_seq,
                        silent_s=round(silent_s, 3),
                        detail=detail,
                        declared_at=self._wall(now),
                    )
                    if self._propose(
                        proposals,
                        Proposal(
                            f"declare:{name}",
                            DeclareFailed(name, rec.heartbeat_seq, evidence),
                            s.commit_timeout_s,
                        ),
                        now,
                    ):
                        events.append(
                            event("declare_failed", node=name, silent_s=round(silent_s, 3))
                        )
            elif rec.state is NodeState.FAILED:
                self._fence(now, name, view, proposals, actions, events)

        self._place(now, view, proposals, events)

    def _place(
        self, now: float, view: ConsensusView, proposals: list[Proposal], events: list[Event]
    ) -> None:
        s = self.settings
        state = view.state
        cold = self._cold_start(now, state)
        # Placement depends only on the guests and on the nodes' states, not on heartbeats:
        # skip re-planning while neither changed since a plan that had nothing to do (on a
        # 10 000-guest cluster a plan costs ~15 ms, and the loop runs every 50 ms).
        # A node silent for longer than a lease cannot start anything now (it is about to lose
        # its lease, or already has): do not hand it guests until it is heard from again.
        silent = frozenset(
            n
            for n, r in state.nodes.items()
            if n != s.node
            and r.state is NodeState.UP
            and now - self._silence_start(n, r.heartbeat_seq, view, now) > s.lease_s
        )
        nodes_basis = (
            tuple((n, r.state, r.role, r.maintenance) for n, r in sorted(state.nodes.items())),
            silent,
        )
        last = self._m.idle_plan
        if not cold and last is not None and last[0] is state.guests and last[1] == nodes_basis:
            return
        exclude = silent | {s.node} if self._m.leaving else silent
        result = plan(state, s.capacity_mib, s.max_concurrent_starts, exclude)
        errors = self._give_up_on(now, state, result.unplaced, proposals, events)
        placements = tuple(p for p in result.placements if p.guest not in errors)
        idle = not result.placements and not errors and not self._m.leaving
        self._m.idle_plan = (state.guests, nodes_basis) if idle else None
        if cold:
            # At cold start, guests that never had an owner wait a moment for every hypervisor
            # to join, or the first node up would take them all regardless of preferences.
            placements = tuple(p for p in placements if p.expected_generation > 0)
        if placements and "assign" not in self._m.proposals:
            assignments = tuple(
                Assignment(p.guest, p.node, p.expected_generation) for p in placements
            )
            self._propose(
                proposals,
                Proposal(
                    "assign",
                    AssignGuests(assignments, "placed", self._wall(now)),
                    s.commit_timeout_s,
                ),
                now,
            )
            for p in placements:
                events.append(
                    event(
                        "assign", guest=p.guest, node=p.node, generation=p.expected_generation + 1
                    )
                )
        unplaced = {u.guest: u.why for u in result.unplaced}
        for guest, why in sorted(unplaced.items()):
            if self._m.unplaced.get(guest) != why:
                events.append(event("unplaced", guest=guest, why=why))
        self._m.unplaced = unplaced

    def _give_up_on(
        self,
        now: float,
        state: ClusterState,
        unplaced: tuple[Unplaced, ...],
        proposals: list[Proposal],
        events: list[Event],
    ) -> set[str]:
        """A guest that failed on more than `max_relocations` + 1 nodes, or on every node it
        may run on, goes to the error state: an admin has to look (and disable/enable it).
        Returns the guests put in error, which are not placed."""
        s = self.settings
        # A guest that a node gave up on and that cannot go anywhere else now is not left
        # stopped without a word: the error state alerts (waiting for a start slot is fine).
        hopeless = {
            u.guest
            for u in unplaced
            if u.hopeless or (state.guests[u.guest].failed_nodes and not u.waiting)
        }
        errors: set[str] = set()
        for guest in state.guests.values():
            too_many = len(guest.failed_nodes) > s.max_relocations
            if not (guest.name in hopeless or too_many) or guest.state is not GuestState.STOPPED:
                continue
            if guest.desired is not DesiredState.RUNNING:
                continue
            errors.add(guest.name)
            reason = f"error: failed on {', '.join(guest.failed_nodes)}"
            if self._propose(
                proposals,
                Proposal(
                    f"error:{guest.name}",
                    GuestError(guest.name, guest.generation, reason, self._wall(now)),
                    s.commit_timeout_s,
                ),
                now,
            ):
                events.append(event("guest_error", guest=guest.name, reason=reason))
        return errors

    def _cold_start(self, now: float, state: ClusterState) -> bool:
        if now >= self.started_at + self.settings.initial_placement_wait_s:
            return False
        return any(
            ns.role is NodeRole.HYPERVISOR and state.node(name).state is not NodeState.UP
            for name, ns in self.settings.nodes.items()
        )

    def _silence_start(self, node: str, seq: int, view: ConsensusView, now: float) -> float:
        """When this node last applied `node`'s heartbeat number `seq` (its own clock).

        If it never applied it itself (e.g. it learned the state from a snapshot), silence is
        counted from the moment it first saw that sequence: later than the truth, so safe.
        """
        seen = view.heartbeats.get(node)
        if seen is not None and seen.seq == seq:
            return seen.at
        known = self._m.first_seen.get(node)
        if known is not None and known[0] == seq:
            return known[1]
        self._m.first_seen[node] = (seq, now)
        return now

    def _fence(
        self,
        now: float,
        name: str,
        view: ConsensusView,
        proposals: list[Proposal],
        actions: list[Action],
        events: list[Event],
    ) -> None:
        s = self.settings
        rec = view.state.node(name)
        method = s.nodes[name].fence_method if name in s.nodes else None
        if method is None:
            return
        if method is FenceMethod.WATCHDOG:
            # The failed node stopped renewing by lease_s after its last heartbeat, stopped
            # petting then, and its watchdog resets it within watchdog_timeout_s after that.
            since = self._silence_start(name, rec.heartbeat_seq, view, now)
            deadline = since + s.lease_s + s.nodes[name].watchdog_timeout_s + s.watchdog_margin_s
            if now >= deadline:
                detail = f"watchdog deadline passed ({now - since:.2f}s since last heartbeat)"
                if self._propose(
                    proposals,
                    Proposal(
                        f"fence_result:{name}",
                        FenceResult(
                            name,
                            rec.failure_epoch,
                            True,
                            FenceMethod.WATCHDOG,
                            detail,
                            self._wall(now),
                        ),
                        s.commit_timeout_s,
                    ),
                    now,
                ):
                    events.append(event("fence_watchdog", node=name))
            return
        key = RunFence(name, rec.failure_epoch).key
        if key in self._m.actions or f"fence_result:{name}" in self._m.proposals:
            return
        attempt = (name, rec.failure_epoch, rec.fence.attempts)
        if rec.fence.in_progress_by == s.node and attempt not in self._m.fence_launched:
            self._m.fence_launched.add(attempt)
            actions.append(RunFence(name, rec.failure_epoch))
            events.append(
                event("fence", node=name, epoch=rec.failure_epoch, attempt=rec.fence.attempts)
            )
            return
        if now < self._m.fence_next_at.get(name, -math.inf):
            return
        self._propose(
            proposals,
            Proposal(
                f"fence_started:{name}",
                FenceStarted(name, rec.failure_epoch, s.node, self._wall(now)),
                s.commit_timeout_s,
            ),
            now,
        )

    # -- the local hypervisor --------------------------------------------------------------

    def _protected(self, state: ClusterState, domain: str) -> tuple[bool, GuestRecord | None]:
        """Is `domain` a protected guest (in the config or the state), and its record."""
        record = state.by_domain.get(domain)
        return (record is not None or domain in self._config_domains), record

    def _no_protected_running(self, state: ClusterState, local: LocalView) -> bool | None:
        if self.settings.role is NodeRole.WITNESS:
            return True
        if local.domains is None:
            return None
        return not any(
            d.running and self._protected(state, name)[0] for name, d in local.domains.items()
        )

    def _in_startup_grace(self, now: float) -> bool:
        """A new agent process has not had time to prove it still holds the lease its
        predecessor held. Until then it neither starts nor destroys anything."""
        return not self._m.ever_leased and now < self.started_at + self.settings.lease_s

    def _reconcile_local(
        self,
        now: float,
        state: ClusterState,
        local: LocalView,
        lease_valid: bool,
        proposals: list[Proposal],
        actions: list[Action],
        events: list[Event],
    ) -> None:
        s = self.settings
        assert local.domains is not None
        # Guests are handed over (stopped here, placed elsewhere) when the node leaves or an
        # admin put it in maintenance.
        drain = ""
        if self._m.leaving:
            drain = "node leaving"
        elif state.node(s.node).maintenance:
            drain = "node in maintenance"
        for domain, obs in sorted(local.domains.items()):
            is_protected, guest = self._protected(state, domain)
            if not obs.running or not is_protected:
                continue
            if not lease_valid:
                if self._in_startup_grace(now):
                    continue
                self._destroy(domain, "no valid lease", actions, events, obs.generation)
                continue
            if guest is None:
                continue  # not yet registered by the leader: nobody owns it yet
            if obs.generation is not None:
                known = self._m.seen_running.get(guest.name)
                if known is None or known[0] != obs.generation:
                    self._m.seen_running[guest.name] = (obs.generation, now)
            if guest.owner != s.node:
                if obs.generation is not None and obs.generation > guest.generation:
                    continue  # our view is older than the instance: wait for it to catch up
                self._destroy(
                    domain,
                    f"owned by {guest.owner} at generation {guest.generation}"
                    f" (found generation {obs.generation})",
                    actions,
                    events,
                )
                continue
            if guest.desired is DesiredState.STOPPED or drain:
                stop = StopGuest(guest.name, domain, guest.generation, s.shutdown_timeout_s)
                if stop.key not in self._m.actions:
                    actions.append(stop)
                    events.append(event("stop", guest=guest.name, reason=drain or "disabled"))
            elif obs.generation is not None and obs.generation > guest.generation:
                continue
            elif guest.state is GuestState.STARTING:
                self._propose(
                    proposals,
                    Proposal(
                        f"running:{guest.name}",
                        GuestRunning(guest.name, s.node, guest.generation, self._wall(now)),
                        s.commit_timeout_s,
                    ),
                    now,
                )
            elif guest.state is not GuestState.RUNNING:
                # Running with no committed start (the state says stopped): it may be moved
                # at any moment, so it must not run. It is started again the proper way.
                self._destroy(
                    domain,
                    f"running while {guest.state} (no committed start)",
                    actions,
                    events,
                    obs.generation,
                )

        self._demote_unused(state, local, lease_valid, drain, actions, events)
        if not lease_valid:
            return
        for guest in state.guests_of(s.node):
            seen = local.domains.get(guest.spec.domain)
            if seen is not None and seen.running:
                self._m.started.pop(guest.name, None)
                if guest.spec.storage is StorageKind.DRBD:
                    self._track_peer(now, guest, local, proposals, events)
                continue
            start = StartGuest(guest.name, guest.spec.domain, guest.generation)
            if start.key in self._m.actions:
                continue
            if guest.desired is DesiredState.STOPPED or drain:
                if guest.state in (GuestState.RUNNING, GuestState.STARTING):
                    self._propose(
                        proposals,
                        self._stopped(
                            guest.name,
                            guest.generation,
                            now,
                            failed=False,
                            reason=f"stopped ({drain or 'disabled'})",
                        ),
                        now,
                    )
                continue
            if s.node in guest.failed_nodes:
                continue  # this node gave up on it: the leader moves it elsewhere
            if guest.state is GuestState.RUNNING:
                # Only an instance this agent saw running and did not stop itself has crashed:
                # its own stops and self-fencing destroys are not the guest's fault, and a new
                # agent process cannot tell a crash from its host having restarted.
                gen = guest.generation
                since = self._m.seen_running.get(guest.name)
                fresh = False
                if self._m.stopped_here.get(guest.spec.domain) == gen:
                    crashed, why = False, "stopped by this node"
                elif since is None or since[0] != gen:
                    crashed, why = False, "not running when this agent started (host restart?)"
                else:
                    crashed, why = True, "crashed"
                    # Measured on this agent's monotonic clock from when it first saw the
                    # instance run: a crash weeks after the last one starts a fresh count.
                    ran_for = now - since[1]
                    if ran_for >= s.failure_reset_s:
                        fresh = True
                        why = f"crashed after running {ran_for:.0f} s (a fresh failure count)"
                if self._propose(
                    proposals,
                    self._stopped(
                        guest.name,
                        gen,
                        now,
                        failed=crashed,
                        reason=f"not running: {why}",
                        failures=0 if fresh else guest.failures,
                        fresh_count=fresh,
                    ),
                    now,
                ):
                    name = "guest_lost" if crashed else "guest_not_running"
                    events.append(event(name, guest=guest.name, generation=gen, why=why))
            elif guest.state is GuestState.STOPPED:
                self._propose(
                    proposals,
                    Proposal(
                        f"starting:{guest.name}",
                        GuestStarting(guest.name, s.node, guest.generation, self._wall(now)),
                        s.commit_timeout_s,
                    ),
                    now,
                )
            elif guest.state is GuestState.STARTING:
                failed = self._m.start_failed.get(guest.name)
                if failed is not None and failed[0] == guest.generation:
                    self._propose(
                        proposals,
                        self._stopped(
                            guest.name,
                            guest.generation,
                            now,
                            failed=True,
                            reason=f"start failed: {failed[1]}",
                            failures=guest.failures,
                        ),
                        now,
                    )
                    continue
                started = self._m.started.get(guest.name)
                if started is not None and started[0] == guest.generation:
                    if local.observed_at > started[1]:
                        del self._m.started[guest.name]
                        self._propose(
                            proposals,
                            self._stopped(
                                guest.name,
                                guest.generation,
                                now,
                                failed=True,
                                reason="exited right after start",
                                failures=guest.failures,
                            ),
                            now,
                        )
                    continue
                if guest.spec.storage is StorageKind.DRBD and not self._replica_ready(
                    now, state, guest, local, proposals, actions, events
                ):
                    continue
                self._m.started.pop(guest.name, None)
                actions.append(start)
                events.append(event("start", guest=guest.name, generation=guest.generation))

    # -- DRBD: data before compute ---------------------------------------------------------

    def _replica_ready(
        self,
        now: float,
        state: ClusterState,
        guest: GuestRecord,
        local: LocalView,
        proposals: list[Proposal],
        actions: list[Action],
        events: list[Event],
    ) -> bool:
        """May the guest start here now? Promotes the local replica first when it is safe.

        DESIGN rule 5: promote only an UpToDate replica that is not known to be outdated,
        and only while the peer is connected as Secondary, or is fenced, or is known outdated
        (then it cannot be Primary with newer data). A split brain is never resolved here.
        """
        s = self.settings
        rep = local.replicas.get(guest.spec.resource)
        peer = guest.spec.peer_of(s.node)
        if rep is not None and rep.role is ReplicaRole.PRIMARY and not rep.split_brain:
            self._m.waiting.pop(guest.name, None)
            return True
        give_up = ""
        wait = ""
        if rep is None or peer is None:
            give_up = f"no DRBD resource {guest.spec.resource!r} on this host"
        elif rep.split_brain:
            wait = "DRBD split brain: an admin must resolve it (never automatic)"
        elif s.node in guest.outdated_nodes:
            give_up = "this replica is known to be outdated"
        elif rep.disk is not DiskState.UP_TO_DATE:
            if rep.disk in (DiskState.OUTDATED, DiskState.INCONSISTENT, DiskState.DISKLESS):
                give_up = f"local replica is {rep.disk}"
            else:
                wait = f"local replica is {rep.disk}, not known to be current"
        elif rep.connected and rep.peer_role is ReplicaRole.PRIMARY:
            wait = f"the replica on {peer} is still Primary"
        elif not rep.connected and not (
            state.node(peer).state is NodeState.FENCED or peer in guest.outdated_nodes
        ):
            wait = f"{peer} is unreachable and neither fenced nor known outdated"
        if give_up:
            self._m.waiting.pop(guest.name, None)
            self._propose(
                proposals,
                self._stopped(
                    guest.name,
                    guest.generation,
                    now,
                    failed=True,
                    reason=f"cannot start here: {give_up}",
                    failures=s.max_start_failures,
                ),
                now,
            )
            return False
        if wait:
            if self._m.waiting.get(guest.name) != wait:
                self._m.waiting[guest.name] = wait
                events.append(event("start_waits", guest=guest.name, why=wait))
            return False
        promote = PromoteReplica(guest.name, guest.spec.resource, guest.generation)
        if promote.key not in self._m.actions:
            actions.append(promote)
            events.append(
                event(
                    "promote",
                    guest=guest.name,
                    resource=guest.spec.resource,
                    generation=guest.generation,
                )
            )
        return False

    def _track_peer(
        self,
        now: float,
        guest: GuestRecord,
        local: LocalView,
        proposals: list[Proposal],
        events: list[Event],
    ) -> None:
        """As the Primary: commit that a disconnected peer is outdated (what a fence-peer
        handler does before I/O resumes), and that a resynchronised one is current again."""
        s = self.settings
        rep = local.replicas.get(guest.spec.resource)
        peer = guest.spec.peer_of(s.node)
        if rep is None or peer is None or rep.role is not ReplicaRole.PRIMARY:
            return
        if not rep.connected and peer not in guest.outdated_nodes:
            command: Command = ReplicaOutdated(
                guest.name, peer, s.node, guest.generation, self._wall(now)
            )
            if self._propose(
                proposals, Proposal(f"outdated:{guest.name}", command, s.commit_timeout_s), now
            ):
                events.append(event("peer_outdated", guest=guest.name, peer=peer))
        elif (
            rep.connected and rep.peer_disk is DiskState.UP_TO_DATE and peer in guest.outdated_nodes
        ):
            command = ReplicaUpToDate(guest.name, peer, s.node, guest.generation, self._wall(now))
            self._propose(
                proposals, Proposal(f"uptodate:{guest.name}", command, s.commit_timeout_s), now
            )

    def _demote_unused(
        self,
        state: ClusterState,
        local: LocalView,
        lease_valid: bool,
        drain: str,
        actions: list[Action],
        events: list[Event],
    ) -> None:
        """A Primary replica whose guest does not run here and is not about to start here is
        demoted, so the other host can be promoted."""
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
            keep = (
                lease_valid
                and not drain
                and guest.owner == self.settings.node
                and guest.desired is DesiredState.RUNNING
                and guest.state in (GuestState.STARTING, GuestState.RUNNING)
            )
            if keep:
                continue
            action = DemoteReplica(resource, "guest not running here")
            if action.key not in self._m.actions:
                actions.append(action)
                events.append(event("demote", resource=resource))

    def _destroy(
        self,
        domain: str,
        reason: str,
        actions: list[Action],
        events: list[Event],
        generation: int | None = None,
    ) -> None:
        action = DestroyDomain(domain, reason, generation)
        if action.key in self._m.actions:
            return
        actions.append(action)
        events.append(event("destroy", domain=domain, reason=reason))

    def _stopped(
        self,
        guest: str,
        generation: int,
        now: float,
        *,
        failed: bool,
        reason: str,
        failures: int = 0,
        fresh_count: bool = False,
    ) -> Proposal:
        """`failures`: the failures counted before this one (0 when `fresh_count`)."""
        give_up = failed and failures + 1 >= self.settings.max_start_failures
        return Proposal(
            f"stopped:{guest}",
            GuestStopped(
                guest,
                self.settings.node,
                generation,
                failed,
                give_up,
                reason + (" - giving up" if give_up else ""),
                self._wall(now),
                fresh_count,
            ),
            self.settings.commit_timeout_s,
        )

    def _may_pet(
        self, now: float, state: ClusterState, local: LocalView, lease_valid: bool
    ) -> bool:
        """Pet the watchdog while the lease is valid, or while nothing protected runs here.

        Not petting with no guest running would turn every loss of quorum into a reboot loop
        of the surviving hosts without protecting anything. A failed observation counts as
        "may be running": a hung libvirt must not keep the watchdog quiet.
        """
        if lease_valid:
            return True
        if self._in_startup_grace(now):
            return True
        return self._no_protected_running(state, local) is True

    # -- helpers ---------------------------------------------------------------------------

    def _propose(self, proposals: list[Proposal], proposal: Proposal, now: float = 0.0) -> bool:
        """Queue a proposal unless one with the same key is still in flight."""
        if proposal.key in self._m.proposals:
            return False
        self._m.proposals[proposal.key] = now
        proposals.append(proposal)
        return True

    def _wall(self, now: float) -> float:
        return round(now + self._wall_offset, 3)
