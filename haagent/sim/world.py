"""A deterministic simulated cluster: N real agent cores, every port faked.

`World` runs the daemon's own `AgentCore` and `apply` — imported, not copied — against fakes,
each named as one:

- FakeClock: each node's monotonic clock runs at its own rate (drift) from its own origin; the
  wall clock (display only) can jump.
- FakeRaft: one committed log. A proposal commits only if its proposer can talk to a leader
  that can talk to a majority; it can be delayed, dropped, or applied after the proposer gave
  up on it, or commit twice (pysyncobj re-sends queued commands to a new leader:
  `SimOptions.duplicate_probability`). Each node applies a committed
  entry after a delay (`SimOptions.apply_delay_s`), so local reads are stale; nodes cut off
  from the leader apply nothing until they are reconnected. An isolated old leader keeps
  believing it leads for a while (`SimOptions.stale_leader_s`), as pysyncobj's
  `leaderFallbackTimeout` makes it do.
- FakeHypervisor: the domains each host runs; power loss empties it; starts can be scripted
  to fail; an action in flight survives the agent that asked (libvirtd finishes it) but not a
  power cycle. A host powered on is powered at once (a fence can switch it off while it boots)
  and starts its agent after `boot_s`.
- FakeFencer: per target, a script of attempts; an attempt tries fencing levels in order
  (`fail/ok`: level 1 fails, level 2 powers the target off), a level may also hang until the
  fence timeout.
- FakeWatchdog: a host whose agent stops petting for its timeout is reset (powered off),
  unless the simulated hosts have no hardware watchdog (`SimOptions.hardware_watchdog`). A
  device may round its timeout up to whole seconds (`SimOptions.watchdog_round_up`); the
  agent commits what its device armed. An agent killed and restarted leaves the device armed
  (its countdown runs on); the new agent, like the daemon, opens it (pings it) only once it
  holds a lease of its own.
- FakeExecutor: a start is checked against the agent's lease and its replica's committed
  state at the moment of the hypervisor call (haagent.core.authority), is refused if either
  moved on, and holds a permit until the fake hypervisor finishes it; the watchdog is not
  petted while a permit is overdue. A start can be scripted to take long (`slow_start`): past
  `start_timeout_s` the agent hears "unknown" and the domain comes up late.
- FakeNetwork: blocked directed links; partitions; one-way drops.
- FakeDrbd (haagent.sim.replicas): one DRBD-8.4-like resource per drbd guest, with roles and
  disk states (Outdated too), protocol C writes, frozen I/O and a fence-peer handler that
  commits through this fake Raft as `haagent drbd fence-peer` does (and can fail), resync,
  split brain with its helpers and StandAlone. DRBD traffic uses the same simulated links; it
  needs both hosts powered, not their agents. The agents read it through fake events2
  watchers and the production parser (haagent.sim.events2), which can die or stall.
- FakeAdmin: admin commands (disable, enable, maintenance) go through the leader, or any
  running agent, and are retried every second until they commit, in the order given.

Same seed, same run: all randomness comes from one `random.Random(seed)`, events at equal
times run in insertion order, and nothing iterates an unordered set.

After every step the observers (the invariant checker of `haagent.sim.invariants`) run.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Never

from haagent.agent import (
    Action,
    ActionKey,
    ActionResult,
    AgentCore,
    AgentSettings,
    AttachLeg,
    DemoteReplica,
    DestroyDomain,
    DetachLeg,
    LiveMigrate,
    LocalView,
    NodeSettings,
    PromoteReplica,
    Proposal,
    ProposalKey,
    ResumeGuest,
    ResumeReplicaIo,
    RunFence,
    StartGuest,
    StopGuest,
)
from haagent.commands import (
    Command,
    ConfirmFenced,
    DefineGuest,
    Heartbeat,
    Join,
    MigrateGuest,
    SetDesired,
    SetMaintenance,
)
from haagent.core.authority import ActingCalls, refusal
from haagent.core.digests import CHECKPOINT_EVERY, KEEP_CHECKPOINTS, is_checkpoint, state_digest
from haagent.core.settings import timing_overrides
from haagent.model import (
    ClusterState,
    DesiredState,
    FenceMethod,
    GuestSpec,
    NodeRole,
    StorageKind,
)
from haagent.ports import (
    ConsensusView,
    DomainObservation,
    FenceOutcome,
    HeartbeatSeen,
    Outcome,
    OutcomeKind,
)
from haagent.sim import admin_verbs
from haagent.sim.fence_peer import run_fence_peer
from haagent.sim.migrations import FakeMigrator
from haagent.sim.network import FakeNetwork
from haagent.sim.raid1 import FakeRaid1
from haagent.sim.replicas import FakeDrbd
from haagent.statemachine import apply
from haagent.timing import FAST_TIMING

ADMIN = "admin"
"""`resend admin TYPE`: an admin command (no node proposed it) commits again late."""

TraceValue = str | int | float | bool | None

AuthorisedAction = StartGuest | LiveMigrate | ResumeGuest | AttachLeg | DetachLeg
"""The actions a fake checks against the lease and the generation right before its call."""

FENCE_STEPS = ("ok", "fail", "hang")
"""What one fencing level of a FakeFencer attempt does."""


@dataclass(frozen=True)
class TraceEvent:
    """One structured event of a run: a fault, a commit, an agent decision, a physical fact."""

    t: float
    node: str | None
    name: str
    data: tuple[tuple[str, TraceValue], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(self.t, 3), "event": self.name}
        if self.node is not None:
            out["at"] = self.node
        out.update(self.data)
        return out


@dataclass(frozen=True)
class SimOptions:
    """Knobs of the fakes (not of the agent, whose settings come from `AgentSettings`)."""

    tick_s: float = 0.05  # the daemon's loop period
    commit_delay_s: tuple[float, float] = (0.001, 0.004)
    apply_delay_s: tuple[float, float] = (0.0005, 0.002)
    election_timeout_s: tuple[float, float] = (0.3, 0.6)
    stale_leader_s: float | None = None  # an isolated leader's belief; None: election min
    start_s: float = 0.05
    destroy_s: float = 0.02
    migrate_s: float = 1.0  # one live migration's copy (FakeMigrator)
    stop_s: float = 0.3
    fence_s: float = 0.1  # one fencing level that answers
    boot_s: float = 3.0  # power on -> agent running
    drift_ppm: float = 100.0  # max clock rate error per node, drawn per seed
    drop_probability: float = 0.0  # proposals (or their answers) lost in the network
    duplicate_probability: float = 0.0  # a committed proposal commits again, up to 3 s later
    keep_guests_on_agent_restart: bool = True  # like libvirtd: guests outlive the agent
    hardware_watchdog: bool = True  # every hypervisor has one (required for watchdog fencing)
    watchdog_round_up: bool = False  # devices arm ceil(configured) seconds (drivers take ints)
    heal_bound_s: float = 30.0  # after the last fault heals, every wanted guest runs by then
    checkpoint_every: int = CHECKPOINT_EVERY  # commands between two state digests


@dataclass
class _Node:
    name: str
    role: NodeRole
    rate: float
    origin: float
    wall_offset: float
    powered: bool = True
    booting: bool = False  # powered, agent not started yet
    boot_count: int = 0
    hung: bool = False
    agent: AgentCore | None = None
    generation_of_agent: int = 0
    domains: dict[str, DomainObservation] = field(default_factory=dict)
    fence_script: list[str] = field(default_factory=list)
    start_failures: dict[str, int] = field(default_factory=dict)
    slow_starts: dict[str, float] = field(default_factory=dict)  # guest -> next start's duration
    # domain -> (when its create() returns, boot_count): a start still inside the hypervisor.
    creating: dict[str, tuple[float, int]] = field(default_factory=dict)
    calls: ActingCalls = field(default_factory=ActingCalls)  # the agent's authorised calls
    watchdog_deferred: bool = False  # armed by a predecessor: open only with a lease
    watchdog_released: bool = False  # released by a disarm or a frozen exit (magic close)
    # Local time each domain last came up (a start authorised under a lease may complete
    # after it: invariant 4 then counts the stop grace from here).
    appeared_at: dict[str, float] = field(default_factory=dict)
    last_pet: float | None = None
    next_tick: float = 0.0
    # The Raft replica (its journal survives restarts and power loss).
    applied: int = 0
    state: ClusterState = field(default_factory=ClusterState)
    heartbeats: dict[str, HeartbeatSeen] = field(default_factory=dict)
    believes_leader_until: float = -math.inf
    resumed_at: float = -math.inf  # local clock: when a hung agent last continued
    start_after_exit: bool = False  # a start was asked while the agent was leaving
    # Results that arrived while the agent was hung.
    deferred: list[Callable[[], None]] = field(default_factory=list)
    # Divergence (issue 8 item 6): the replica's state digests (process memory), why it
    # cannot be trusted (a snapshot that failed to load), whether its snapshot on disk is
    # damaged (every start fails to load it), and whether the agent took it out of Raft.
    checkpoints: dict[int, str] = field(default_factory=dict)
    incompatible: str | None = None
    snapshot_broken: bool = False
    left_raft: bool = False

    def local(self, t: float) -> float:
        return self.origin + t * self.rate


# A scheduled call: (time, sequence number, function). A plain tuple, because the heap compares
# entries in C then (a dataclass with `order=True` compared in Python cost ~5% of a run); the
# unique sequence number breaks ties in scheduling order, so the function is never compared.
_Scheduled = tuple[float, int, Callable[[], None]]


@dataclass
class _Pending:
    """A proposal on its way. Like pysyncobj's command queue, it waits for a leader and may
    commit after its proposer stopped waiting (`answered` with UNKNOWN)."""

    node: str
    agent_gen: int
    key: ProposalKey | None  # None: an admin command or a re-send, which no agent waits for
    command: Command
    answered: bool = False
    dropped: bool = False
    index: int | None = None  # log index once committed
    duplicate: bool = False  # a second copy of a command that already committed
    # Not the agent's own proposal: a fence-peer handler's, answered through its socket.
    on_outcome: Callable[[Outcome], None] | None = None
    decided: bool = False  # an admin command: the version it is decided on is filled in
    refused: str = ""  # why `apply` refused it once committed ("" if accepted)

    @property
    def done(self) -> bool:
        return self.dropped or (self.index is not None and self.answered)


class World:
    """One simulated cluster. Drive it with `run_until` and the fault methods.

    `physical_version` grows whenever what a fake hypervisor runs may have changed, and
    `topology_version` whenever who can talk to whom may have changed (power, hang, agent
    restart, network): observers use them to skip work on steps where nothing changed.
    """

    def __init__(
        self,
        seed: int,
        nodes: Mapping[str, NodeSettings],
        guests: Iterable[GuestSpec],
        settings: Mapping[str, Any] | None = None,
        options: SimOptions | None = None,
        cluster: str = "sim",
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = options or SimOptions()
        self.now = 0.0
        self.cluster = cluster
        self._queue: list[_Scheduled] = []
        self._seq = itertools.count()
        self.trace: list[TraceEvent] = []
        self.log: list[Command] = []
        self._commit_at: list[float] = []  # when each log entry committed (non-decreasing)
        self._log_by: list[str] = []  # who proposed each log entry
        self.committed_state = ClusterState()  # the state at the end of the log
        self.leader: str | None = None
        self.term = 0
        self._election_at: float | None = None
        self.blocked: set[tuple[str, str]] = set()
        # Leaders that hear nobody while everyone hears them (an inbound-only cut): they keep
        # leading, nothing commits (see `deaf`).
        self.deaf_nodes: set[str] = set()
        # Replicas that stopped applying while their proposals still commit (see `stall`).
        self.stalled: set[str] = set()
        self.node_settings = dict(nodes)
        self.guest_specs = tuple(guests)
        self.spec_by_name = {g.name: g for g in self.guest_specs}
        self.drbd = FakeDrbd(
            self.guest_specs, self._fence_peer, self.record, functools.partial(getattr, self, "now")
        )
        self.broken_handlers: set[str] = set()  # nodes whose fence-peer handler exits 1
        self.raid1 = FakeRaid1(self.guest_specs)
        self.raid1_problems: list[str] = []  # FakeRaid1's "two writers on one leg" findings
        self.fake_network = FakeNetwork(self._fault)
        self.migrator = FakeMigrator(self)
        self._settings_overrides = dict(settings or {})
        # Per-node changes to its config file (`config`), read by its next agent start.
        self.node_overrides: dict[str, dict[str, Any]] = {}
        self._pending: list[_Pending] = []
        self._admin_queue: list[_Pending] = []
        self._admin_indexes: list[int] = []  # log indexes (0-based) of committed admin commands
        self._armed_watchdog_s: dict[str, float] = {}
        self._observers: list[Callable[[World], None]] = []
        self.last_fault_at = 0.0
        self.physical_version = 0
        self.topology_version = 0
        self._majority_cache: dict[str, bool] = {}
        self._majority_version = -1
        o = self.options
        if not o.hardware_watchdog:
            by_watchdog = sorted(
                n for n, ns in nodes.items() if ns.fence_method is FenceMethod.WATCHDOG
            )
            if by_watchdog:
                raise ValueError(
                    f"watchdog fencing of {', '.join(by_watchdog)} needs hardware_watchdog"
                )
        self._settings_cache: dict[str, AgentSettings] = {}
        self.nodes: dict[str, _Node] = {}
        for name in sorted(nodes):
            drift = self.rng.uniform(-o.drift_ppm, o.drift_ppm) * 1e-6
            node = _Node(
                name=name,
                role=nodes[name].role,
                rate=1.0 + drift,
                origin=self.rng.uniform(100.0, 10_000.0),
                wall_offset=1.7e9 + self.rng.uniform(0, 1000),
            )
            node.next_tick = self.rng.uniform(0, o.tick_s)
            self.nodes[name] = node
            self._start_agent(node)

    # -- settings -----------------------------------------------------------------------------

    def agent_settings(self, node: str) -> AgentSettings:
        cached = self._settings_cache.get(node)
        if cached is not None:
            return cached
        base: dict[str, Any] = {
            "cluster": self.cluster,
            "node": node,
            "nodes": self.node_settings,
            "guests": self.guest_specs,
            # The scenarios and the swarm's recovery bounds were written for the fast profile.
            **timing_overrides(FAST_TIMING),
        }
        base.update(self._settings_overrides)
        base.update(self.node_overrides.get(node, {}))
        settings = AgentSettings(**base)
        self._settings_cache[node] = settings
        return settings

    # -- the event loop -----------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), fn))

    def run_until(self, t_end: float) -> None:
        """Advance simulated time to `t_end`, processing every event and tick on the way."""
        nodes = list(self.nodes.values())
        queue = self._queue
        while True:
            next_tick = min([n.next_tick for n in nodes])
            t = min(next_tick, queue[0][0]) if queue else next_tick
            if t > t_end:
                self.now = float(t_end)
                return
            self.now = max(self.now, t)
            while queue and queue[0][0] <= self.now:
                heapq.heappop(queue)[2]()
            self._raft_housekeeping()
            self._watchdogs()
            if self.drbd.resources:
                self._drbd_step()
            if self.raid1.guests:
                self.raid1_problems.extend(
                    self.raid1.step(self.now, self._domain_running, self.drbd_link)
                )
            for node in nodes:
                if node.next_tick <= self.now:
                    node.next_tick = self.now + self.options.tick_s / node.rate
                    self._tick(node)
            for observer in self._observers:
                observer(self)

    def observe(self, fn: Callable[[World], None]) -> None:
        """Call `fn(world)` after every step (the invariant checker uses this)."""
        self._observers.append(fn)

    def record(
        self,
        at: str | None,
        name: str,
        data: Mapping[str, TraceValue] | None = None,
        **more: TraceValue,
    ) -> None:
        """Append a trace event; `at` is the node it happened on (None: the cluster)."""
        items = dict(data or {})
        items.update(more)
        self.trace.append(TraceEvent(self.now, at, name, tuple(sorted(items.items()))))

    # -- agents -------------------------------------------------------------------------------

    def _start_agent(self, node: _Node) -> None:
        node.generation_of_agent += 1
        incarnation = f"{node.name}-{node.generation_of_agent}"
        core = AgentCore(self.agent_settings(node.name), incarnation, node.local(self.now))
        core.set_wall_offset(node.wall_offset)
        if self.options.hardware_watchdog and node.role is NodeRole.HYPERVISOR:
            # Its device armed the configured timeout (rounded, maybe) and reports it; the
            # join commits that.
            core.set_watchdog_timeout(self.armed_watchdog_s(node.name))
        node.agent = core
        node.hung = False
        self.stalled.discard(node.name)  # a new process has a new replica
        node.checkpoints.clear()
        node.left_raft = False
        node.incompatible = None
        if node.snapshot_broken:
            # The vendored pysyncobj freezes a replica whose snapshot failed to load.
            node.incompatible = "snapshot failed to load (simulated damage)"
            node.state = ClusterState()
            node.heartbeats.clear()
        node.deferred.clear()
        node.calls = ActingCalls()  # the old process's threads died with it
        # A device the old process left armed keeps counting; the new one opens it (a ping)
        # only once it holds a lease (haagent.daemon.watchdogs).
        node.watchdog_deferred = node.last_pet is not None
        node.watchdog_released = False  # a new process opens its watchdog at start-up
        node.start_after_exit = False
        self.drbd.agent_started(node.name)  # its events2 watchers start with a fresh dump
        self.topology_version += 1

    def _alive(self, node: _Node) -> bool:
        return node.powered and node.agent is not None and not node.hung

    def _tick(self, node: _Node) -> None:
        if not self._alive(node):
            return
        assert node.agent is not None
        local_now = node.local(self.now)
        view = self._view(node)
        domains = dict(node.domains) if node.role is NodeRole.HYPERVISOR else {}
        replicas, unknown = self.drbd.observe(node.name)
        missing = self.fake_network.missing(node.name, self.spec_by_name.values())
        mirrors = self.raid1.observe(node.name, self._domain_running) if self.raid1.guests else {}
        local = LocalView(
            domains,
            local_now,
            replicas,
            replicas_unknown=unknown,
            missing_networks=missing,
            mirrors=mirrors,
        )
        agent = node.agent
        step = agent.tick(local_now, view, local)
        for ev in step.events:
            self.record(node.name, ev.name, dict(ev.data))
        pet = step.pet_watchdog
        if pet and node.calls.overdue(local_now, agent.lease.until, agent.lease.held_since):
            pet = False  # a start is in the hypervisor past the lease that authorised it
        if step.release_watchdog and not node.watchdog_released and not node.calls.open():
            # Magic close (the simulated devices allow it), as the daemon's WatchdogKeeper.
            node.watchdog_released, node.watchdog_deferred, node.last_pet = True, False, None
            self.record(node.name, "watchdog_released")
        elif not step.release_watchdog and node.watchdog_released:
            node.watchdog_released = False  # opened again: armed from the next pet
            self.record(node.name, "watchdog_reopened")
        agent.arming.watchdog_armed = not node.watchdog_released
        if node.watchdog_released:
            pet = False
        if pet and node.watchdog_deferred:
            pet = agent.lease_valid(local_now)
            node.watchdog_deferred = not pet
        if pet:
            node.last_pet = self.now
        for proposal in step.proposals:
            self._propose(node, proposal)
        for action in step.actions:
            self._act(node, action)
        if step.diverged is not None and not node.left_raft:
            node.left_raft = True  # the shell's `RaftConsensus.leave`
            self.topology_version += 1
            self.record(node.name, "left_raft", reason=step.diverged)
        if step.left:
            self._agent_exits(node)

    def _agent_exits(self, node: _Node) -> None:
        """A clean shutdown completed: the process exits. It disarms the watchdog only when
        no protected domain runs (as the daemon does); otherwise the watchdog stays armed."""
        protected = {g.domain for g in self.guest_specs}
        if not any(d.running and name in protected for name, d in node.domains.items()):
            node.last_pet = None
        node.agent = None
        self.topology_version += 1
        self.record(node.name, "agent_exited")
        if node.start_after_exit:
            self._restart_after_exit(node)

    def _restart_after_exit(self, node: _Node) -> None:
        node.start_after_exit = False
        node.next_tick = self.now
        self._start_agent(node)
        self.record(
            node.name, "agent_started", incarnation=f"{node.name}-{node.generation_of_agent}"
        )

    def _deliver(self, node: _Node, agent_gen: int, fn: Callable[[], None]) -> None:
        """Hand a result to the agent that asked, if it still exists (after a hang, later)."""
        if not node.powered or node.agent is None or node.generation_of_agent != agent_gen:
            return
        if node.hung:
            node.deferred.append(fn)
        else:
            fn()

    # -- fake raft ----------------------------------------------------------------------------

    def linked(self, a: str, b: str) -> bool:
        """A Raft conversation needs both directions (one TCP connection per pair)."""
        if a == b:
            return self._raft_up(self.nodes[a])
        na, nb = self.nodes[a], self.nodes[b]
        return (
            self._raft_up(na)
            and self._raft_up(nb)
            and (a, b) not in self.blocked
            and (b, a) not in self.blocked
        )

    def _raft_up(self, node: _Node) -> bool:
        # A hung agent is a stopped process: its Raft thread is stopped too.
        return node.powered and node.agent is not None and not node.hung and not node.left_raft

    def _majority(self, node: str) -> bool:
        if self._majority_version != self.topology_version:
            self._majority_cache.clear()
            self._majority_version = self.topology_version
        cached = self._majority_cache.get(node)
        if cached is None:
            reach = sum(1 for other in self.nodes if self.linked(node, other))
            cached = reach * 2 > len(self.nodes)
            self._majority_cache[node] = cached
        return cached

    def _raft_housekeeping(self) -> None:
        if self.leader is not None and not self._majority(self.leader):
            old = self.nodes[self.leader]
            stale = self.options.stale_leader_s
            if stale is None:
                stale = self.options.election_timeout_s[0]
            if self._raft_up(old):
                old.believes_leader_until = self.now + stale
            self.record(self.leader, "raft_leader_lost", term=self.term)
            self.leader = None
        if self.leader is None:
            if self._election_at is None:
                lo, hi = self.options.election_timeout_s
                self._election_at = self.now + self.rng.uniform(lo, hi)
            elif self.now >= self._election_at:
                self._election_at = None
                # A deaf node hears no votes: it cannot win an election.
                candidates = [
                    n for n in self.nodes if self._majority(n) and n not in self.deaf_nodes
                ]
                if candidates:
                    best = max(self.nodes[n].applied for n in candidates)
                    ready = [n for n in candidates if self.nodes[n].applied == best]
                    self.leader = self.rng.choice(ready)
                    self.term += 1
                    self.nodes[self.leader].believes_leader_until = -math.inf
                    self.record(self.leader, "raft_leader", term=self.term)
                    for pending in list(self._pending):
                        self._try_commit(pending)
        # Followers in contact with the leader catch up with the log: with what was committed
        # at least the longest apply delay ago (newer entries arrive by their own appliers, so
        # a follower can lag behind by up to that delay: local reads are stale).
        if self.leader is not None and self.log:
            horizon = self.now - self.options.apply_delay_s[1]
            settled = bisect.bisect_right(self._commit_at, horizon)
            for node in self.nodes.values():
                if node.applied < settled and self.linked(self.leader, node.name):
                    self._apply_up_to(node, settled)

    def _view(self, node: _Node) -> ConsensusView:
        stale = self.now < node.believes_leader_until
        is_leader = node.name == self.leader or stale
        leader = self.leader if self.leader and self.linked(node.name, self.leader) else None
        if node.name != self.leader and stale:
            leader = node.name
        return ConsensusView(
            state=node.state,
            leader=leader,
            is_leader=is_leader,
            term=self.term,
            has_quorum=self._majority(node.name),
            heartbeats=dict(node.heartbeats),
            commit_index=node.applied,
            incompatible=node.incompatible,
            checkpoints=dict(node.checkpoints),
        )

    def _propose(self, node: _Node, proposal: Proposal) -> None:
        pending = _Pending(node.name, node.generation_of_agent, proposal.key, proposal.command)
        self._submit(node, pending, proposal.timeout_s)

    def propose_as(
        self, node: str, command: Command, timeout_s: float, answer: Callable[[Outcome], None]
    ) -> None:
        """A proposal through `node`'s agent that the agent does not wait for itself (the fake
        fence-peer handler's, over the agent's socket); `answer` hears its outcome."""
        n = self.nodes[node]
        pending = _Pending(node, n.generation_of_agent, None, command, on_outcome=answer)
        self._submit(n, pending, timeout_s)

    def _submit(self, node: _Node, pending: _Pending, timeout_s: float) -> None:
        self._pending.append(pending)
        self.at(self.now + timeout_s / node.rate, lambda: self._expire(pending))
        if self.rng.random() < self.options.drop_probability:
            pending.dropped = True  # lost on the way: the proposer will time out
            return
        lo, hi = self.options.commit_delay_s
        self.at(self.now + self.rng.uniform(lo, hi), lambda: self._try_commit(pending))

    def _try_commit(self, pending: _Pending) -> None:
        if pending.index is not None or pending.dropped:
            return
        leader = self.leader
        if leader is None or not self.linked(pending.node, leader) or not self._majority(leader):
            return  # stays queued until a leader is reachable (pysyncobj commandsWaitLeader)
        if leader in self.deaf_nodes:
            if pending.node != leader:
                pending.dropped = True  # forwarded to a leader that cannot hear it: lost
            return  # the leader's own entry waits in its log for the acknowledgements
        self.log.append(pending.command)
        self._commit_at.append(self.now)
        self._log_by.append(pending.node)
        pending.index = len(self.log)
        self.committed_state, result = apply(self.committed_state, pending.command)
        pending.refused = "" if result.accepted else result.detail
        if not isinstance(pending.command, Heartbeat):
            extra: dict[str, TraceValue] = {"duplicate": True} if pending.duplicate else {}
            self.record(
                None,
                "commit",
                extra,
                type=pending.command.type_name,
                by=pending.node,
                accepted=result.accepted,
                detail=_short(pending.command, result.detail),
            )
        p = self.options.duplicate_probability
        if p and not pending.duplicate and pending.agent_gen >= 0 and self.rng.random() < p:
            # pysyncobj re-sent it to a new leader after its first copy committed: the same
            # command commits once more, later. Nobody waits for this copy.
            copy = _Pending(pending.node, -1, pending.key, pending.command, True, duplicate=True)
            self._pending.append(copy)
            self.at(self.now + self.rng.uniform(0.05, 3.0), lambda: self._try_commit(copy))
        lo, hi = self.options.apply_delay_s
        index = pending.index
        for node in self.nodes.values():
            if self.linked(leader, node.name):
                self.at(self.now + self.rng.uniform(lo, hi), self._applier(node, index))
        self._pending = [p for p in self._pending if not p.done]

    def _applier(self, node: _Node, index: int) -> Callable[[], None]:
        return lambda: self._apply_up_to(node, index)

    def _apply_up_to(self, node: _Node, index: int) -> None:
        if node.name in self.stalled or node.incompatible is not None:
            return
        every = self.options.checkpoint_every
        while node.applied < min(index, len(self.log)):
            command = self.log[node.applied]
            node.state, result = apply(node.state, command)
            node.applied += 1
            if is_checkpoint(node.state.applied, every):
                node.checkpoints[node.state.applied] = state_digest(node.state)
                for old in sorted(node.checkpoints)[:-KEEP_CHECKPOINTS]:
                    del node.checkpoints[old]
            if result.accepted and isinstance(command, Heartbeat | Join):
                node.heartbeats[command.node] = HeartbeatSeen(
                    node.state.node(command.node).heartbeat_seq, node.local(self.now)
                )
            self._settle_applied(node, node.applied, result.accepted, result.detail)

    def _settle_applied(self, node: _Node, index: int, accepted: bool, detail: str) -> None:
        """The proposer learns the outcome when it applies its own entry (as in pysyncobj)."""
        for pending in self._pending:
            if pending.index != index or pending.node != node.name or pending.answered:
                continue
            if self.rng.random() < self.options.drop_probability:
                continue  # the answer is lost: the proposer times out (unknown outcome)
            pending.answered = True
            kind = OutcomeKind.ACCEPTED if accepted else OutcomeKind.REFUSED
            self._outcome(pending, Outcome(kind, detail))

    def _expire(self, pending: _Pending) -> None:
        if pending.answered:
            return
        pending.answered = True
        self._outcome(pending, Outcome(OutcomeKind.UNKNOWN, "timeout"))

    def _outcome(self, pending: _Pending, outcome: Outcome) -> None:
        if pending.on_outcome is not None:
            node = self.nodes[pending.node]
            answer = pending.on_outcome
            if node.generation_of_agent != pending.agent_gen or not node.powered:
                answer(Outcome(OutcomeKind.UNKNOWN, "the agent went away"))
            else:
                self._deliver(node, pending.agent_gen, lambda: answer(outcome))
            return
        if pending.agent_gen < 0:
            return  # an admin command: nobody waits
        node = self.nodes[pending.node]
        key = pending.key
        assert key is not None, "every agent proposal has a key"

        def give() -> None:
            assert node.agent is not None
            for ev in node.agent.proposal_done(key, outcome, node.local(self.now)):
                self.record(node.name, ev.name, dict(ev.data))

        self._deliver(node, pending.agent_gen, give)

    # -- fake hypervisors and fence devices ---------------------------------------------------

    def _act(self, node: _Node, action: Action) -> None:
        """Hand an action to the FakeHypervisor or FakeFencer. An action in flight survives
        its agent (libvirtd finishes a start) but not a power cycle of its host."""
        o = self.options
        gen, life = node.generation_of_agent, node.boot_count
        if isinstance(action, StartGuest):
            self._call_start(node, gen, life, action)
        elif isinstance(action, DestroyDomain):
            self.at(
                self._after_create(node, action.domain) + o.destroy_s,
                lambda: self._finish_stop(node, gen, life, action.key, action.domain, "destroyed"),
            )
        elif isinstance(action, StopGuest):
            self.at(
                self._after_create(node, action.domain) + o.stop_s,
                lambda: self._finish_stop(node, gen, life, action.key, action.domain, "stopped"),
            )
        elif isinstance(action, RunFence):
            self._fence(node, gen, life, action)
        elif isinstance(action, PromoteReplica | DemoteReplica | ResumeReplicaIo):
            self.at(self.now + o.destroy_s, lambda: self._finish_replica(node, gen, life, action))
        elif isinstance(action, LiveMigrate | ResumeGuest):
            self.migrator.act(node, gen, life, action)
        elif isinstance(action, AttachLeg | DetachLeg):
            self.at(self.now + o.destroy_s, lambda: self._finish_leg(node, gen, life, action))
        else:
            _exhaustive: Never = action  # mypy: every Action type has a branch above
            raise TypeError(f"the simulator cannot carry out {action!r}")

    # -- FakeDrbd glue ------------------------------------------------------------------------

    def drbd_link(self, a: str, b: str) -> bool:
        """DRBD replicates over the same links as Raft but lives in the kernel: it needs both
        hosts powered, not their agents."""
        return (
            self.nodes[a].powered
            and self.nodes[b].powered
            and (a, b) not in self.blocked
            and (b, a) not in self.blocked
        )

    def _finish_replica(
        self,
        node: _Node,
        gen: int,
        life: int,
        action: PromoteReplica | DemoteReplica | ResumeReplicaIo,
    ) -> None:
        if not node.powered or node.boot_count != life:
            return
        if isinstance(action, PromoteReplica):

            def promoted(refused: str) -> None:
                if not node.powered or node.boot_count != life:
                    return
                self.record(node.name, "drbd_promote", resource=action.resource, ok=not refused)
                self._action_result(node, gen, action.key, ActionResult(not refused, refused))

            # It may wait for the fence-peer handler (DRBD 8.4, promoting while disconnected).
            self.drbd.promote(node.name, action.resource, promoted)
            return
        if isinstance(action, ResumeReplicaIo):
            self.drbd.resume_io(node.name, action.resource)
            self.record(node.name, "drbd_resume_io", resource=action.resource)
            result = ActionResult(True)
        else:
            self.drbd.demote(node.name, action.resource)
            self.record(node.name, "drbd_demote", resource=action.resource)
            result = ActionResult(True)
        self._action_result(node, gen, action.key, result)

    def _domain_running(self, node: str, domain: str) -> bool:
        obs = self.nodes[node].domains.get(domain)
        return self.nodes[node].powered and obs is not None and obs.running

    def _finish_leg(self, node: _Node, gen: int, life: int, action: AttachLeg | DetachLeg) -> None:
        """FakeExecutor for raid1 legs: checked against the lease and generation at the call,
        like a start; then the FakeRaid1 attaches or detaches."""
        if not node.powered or node.boot_count != life or node.agent is None:
            return
        if self.refuse_call(node, gen, action):
            return
        if isinstance(action, AttachLeg):
            why = self.raid1.attach(node.name, action.guest, action.leg, self.drbd_link, self.now)
        else:
            why = self.raid1.detach(node.name, action.guest, action.leg)
        name = "leg_attached" if isinstance(action, AttachLeg) else "leg_detached"
        self.record(node.name, name, guest=action.guest, leg=action.leg, ok=not why)
        self._action_result(node, gen, action.key, ActionResult(not why, why))

    def _drbd_step(self) -> None:
        def running(node: str, domain: str) -> bool:
            obs = self.nodes[node].domains.get(domain)
            return self.nodes[node].powered and obs is not None and obs.running

        self.drbd.step(running, self.drbd_link)

    def _call_start(self, node: _Node, gen: int, life: int, action: StartGuest) -> None:
        """FakeExecutor: check the lease and the generation at the moment of the call, then
        let the FakeHypervisor take `start_s` (or a scripted slow duration). Past the
        agent's `start_timeout_s` the agent hears "unknown"; the domain may come up later."""
        assert node.agent is not None
        if self.refuse_call(node, gen, action, "start_not_made"):
            return
        now = node.local(self.now)
        lease = node.agent.lease
        handle = node.calls.grant(action.key, action.generation, now, lease.until)
        took_s = node.slow_starts.pop(action.guest, self.options.start_s)
        timeout_s = self.agent_settings(node.name).start_timeout_s
        calls = node.calls
        if took_s > timeout_s:

            def give_up() -> None:
                detail = f"start did not return in {timeout_s:g}s (outcome unknown)"
                unknown = ActionResult(False, detail, unknown=True)
                self._action_result(node, gen, action.key, unknown)

            self.at(self.now + timeout_s / node.rate, give_up)

        def finish() -> None:
            calls.release(handle)
            if node.creating.get(action.domain) == (ends, life):
                del node.creating[action.domain]
            self._finish_start(node, gen, life, action, answer=took_s <= timeout_s)

        ends = self.now + took_s
        node.creating[action.domain] = (ends, life)
        self.at(ends, finish)

    def _after_create(self, node: _Node, domain: str) -> float:
        """When a stop or destroy of `domain` may begin: now, or once a create() of it still
        inside the hypervisor has returned. The libvirt adapter's destroy waits for such a
        call (a late create() would otherwise undo the destroy), and so does this fake."""
        pending = node.creating.get(domain)
        if pending is None or pending[1] != node.boot_count:
            return self.now
        return max(self.now, pending[0])

    def slow_start(self, node: str, guest: str, seconds: float) -> None:
        """The next start of `guest` on `node` takes `seconds` in the hypervisor (a slow or
        stuck `create()`); past `start_timeout_s` the agent gives up on it as unknown."""
        self._fault("fault_slow_start", node, guest=guest, seconds=seconds)
        self.nodes[node].slow_starts[guest] = seconds

    def armed_watchdog_s(self, node: str) -> float:
        """The timeout `node`'s watchdog device armed (what its agent commits). Fixed for the
        run (the cluster's node settings do not change), so computed once: every step asks."""
        armed = self._armed_watchdog_s.get(node)
        if armed is None:
            armed = configured = self.node_settings[node].watchdog_timeout_s
            if self.options.watchdog_round_up:
                armed = float(max(1, math.ceil(configured)))
            self._armed_watchdog_s[node] = armed
        return armed

    def _finish_start(
        self, node: _Node, gen: int, life: int, action: StartGuest, answer: bool = True
    ) -> None:
        """`answer`: the agent still waits for the result (False: it already heard
        "unknown"; the domain comes up late, unannounced)."""
        if not node.powered or node.boot_count != life:
            return
        failures = node.start_failures.get(action.guest, 0)
        current = node.domains.get(action.domain)
        spec = self.spec_by_name.get(action.guest)
        drbd_secondary = (
            spec is not None
            and spec.storage is StorageKind.DRBD
            and not self.drbd.is_primary(spec.resource, node.name)
        )
        if drbd_secondary:
            # QEMU cannot open a Secondary DRBD device for writing.
            result = ActionResult(False, "DRBD device is Secondary")
            self.record(node.name, "domain_start_failed", domain=action.domain)
        elif failures > 0:
            node.start_failures[action.guest] = failures - 1
            result = ActionResult(False, "simulated start failure")
            self.record(node.name, "domain_start_failed", domain=action.domain)
        elif current is not None and current.running and current.generation != action.generation:
            result = ActionResult(False, "already running with another generation")
        elif raid1_refused := self._raid1_start(node.name, action):
            # QEMU cannot open a leg it cannot reach.
            result = ActionResult(False, raid1_refused)
            self.record(node.name, "domain_start_failed", domain=action.domain)
        else:
            node.domains[action.domain] = DomainObservation(
                action.domain,
                True,
                owner=node.name,
                generation=action.generation,
                cluster=self.cluster,
            )
            self.physical_version += 1
            node.appeared_at[action.domain] = node.local(self.now)
            self.record(
                node.name, "domain_started", domain=action.domain, generation=action.generation
            )
            result = ActionResult(True)
        if answer:
            self._action_result(node, gen, action.key, result)

    def _raid1_start(self, node: str, action: StartGuest) -> str:
        """'' unless the guest is raid1 and the FakeRaid1 refuses its legs."""
        if action.guest not in self.raid1.guests:
            return ""
        legs = [leg.leg for leg in action.legs]
        why = self.raid1.start(node, action.guest, legs, self.drbd_link)
        if not why:
            self.record(node, "raid1_assembled", guest=action.guest, legs=",".join(legs))
        return why

    def _finish_stop(
        self, node: _Node, gen: int, life: int, key: ActionKey, domain: str, how: str
    ) -> None:
        if not node.powered or node.boot_count != life:
            return
        if domain in node.domains and node.domains[domain].running:
            node.domains[domain] = replace(node.domains[domain], running=False, paused=False)
            self.physical_version += 1
            self.record(node.name, f"domain_{how}", domain=domain)
        self._action_result(node, gen, key, ActionResult(True))

    def linked_hosts(self, a: str, b: str) -> bool:
        """Two hypervisors can reach each other's libvirtd (both powered, no cut between)."""
        return self.drbd_link(a, b)

    def refuse_call(self, node: _Node, gen: int, action: AuthorisedAction, event: str = "") -> bool:
        """FakeExecutor, right before a hypervisor call (haagent.core.authority): True if the
        node's lease or the committed owner at the action's generation refuses it. Then the
        call is not made: `event` (if any) is recorded with the reason and the agent hears a
        refused result. The one refusal path of every fake that acts for the lease."""
        assert node.agent is not None
        why = refusal(
            node.state,
            node.name,
            action.guest,
            action.generation,
            now=node.local(self.now),
            lease_until=node.agent.lease.until,
        )
        if why is None:
            return False
        if event:
            self.record(node.name, event, guest=action.guest, why=why)
        self._action_result(node, gen, action.key, ActionResult(False, why, refused=True))
        return True

    def deliver_result(self, node: _Node, gen: int, key: ActionKey, result: ActionResult) -> None:
        """Hand an action's result to the agent that asked (for the fakes in other modules)."""
        self._action_result(node, gen, key, result)

    def _action_result(self, node: _Node, gen: int, key: ActionKey, result: ActionResult) -> None:
        def give() -> None:
            assert node.agent is not None
            for ev in node.agent.action_done(key, result, node.local(self.now)):
                self.record(node.name, ev.name, dict(ev.data))

        self._deliver(node, gen, give)

    def _fence(self, node: _Node, gen: int, life: int, action: RunFence) -> None:
        """FakeFencer: one attempt goes through the levels of the target's next script entry."""
        target = self.nodes[action.node]
        script = target.fence_script.pop(0) if target.fence_script else "ok"
        timeout_s = self.agent_settings(node.name).fence_timeout_s
        elapsed, ok, level = 0.0, False, None
        notes: list[str] = []
        for index, step in enumerate(script.split("/"), start=1):
            if step == "hang":
                elapsed = timeout_s
                notes.append(f"level {index}: timed out after {timeout_s:g}s")
                break
            elapsed += self.options.fence_s
            if step == "ok":
                ok, level = True, index
                break
            notes.append(f"level {index}: simulated fence failure")
        if ok:
            detail = f"simulated power off by level {level}"
            if notes:
                detail += f" ({'; '.join(notes)})"
        else:
            detail = "; ".join(notes)

        def finish() -> None:
            if not node.powered or node.boot_count != life or node.generation_of_agent != gen:
                # The fence agent was a child of an agent that died meanwhile: it never ran to
                # the end (a BMC that did power the target off would only make things safer).
                self.record(node.name, "fence_abandoned", target=action.node)
                return
            if ok:
                self._power_off(target, reason=f"fenced by {node.name}")
            self.record(node.name, "fence_device", target=action.node, ok=ok, level=level)
            outcome = FenceOutcome(ok, detail, level, elapsed)
            self._action_result(node, gen, action.key, ActionResult(ok, detail, outcome))

        self.at(self.now + elapsed, finish)

    def _watchdogs(self) -> None:
        if not self.options.hardware_watchdog:
            return
        for node in self.nodes.values():
            if node.last_pet is None or not node.powered or node.role is NodeRole.WITNESS:
                continue
            timeout = self._armed_watchdog_s.get(node.name) or self.armed_watchdog_s(node.name)
            if self.now - node.last_pet > timeout:
                self._power_off(node, reason="watchdog expired")

    # -- faults (the scenario vocabulary) -----------------------------------------------------

    def _fault(self, name: str, at: str | None = None, **data: TraceValue) -> None:
        self.last_fault_at = self.now
        self.record(at, name, data)

    def _power_off(self, node: _Node, reason: str) -> None:
        if not node.powered:
            return
        node.powered = False
        node.booting = False
        self.drbd.power_off(node.name)
        node.agent = None
        node.hung = False
        node.domains.clear()
        node.last_pet = None
        node.believes_leader_until = -math.inf
        self.physical_version += 1
        self.topology_version += 1
        self.record(node.name, "power_off", reason=reason)

    def power_off(self, node: str) -> None:
        self._fault("fault_power_off", node)
        self._power_off(self.nodes[node], reason="fault")

    def power_on(self, node: str) -> None:
        """Power the host on: it is powered at once (a fence can power it off again while it
        boots) and starts its agent after `boot_s`. On a powered host whose agent exited, start
        the agent now."""
        self._fault("fault_power_on", node)
        n = self.nodes[node]
        if n.powered:
            # Its agent exited after a clean shutdown: start it again (systemctl start); if it
            # is still leaving, start it once it has exited, as systemd queues the start job.
            if n.booting:
                return
            if n.agent is None:
                self._restart_after_exit(n)
            elif n.agent.leaving:
                n.start_after_exit = True
            return
        n.powered = True
        n.booting = True
        n.boot_count += 1
        self.drbd.power_on(node)
        boot_count = n.boot_count

        def boot() -> None:
            if not n.powered or n.boot_count != boot_count:
                return  # powered off (fenced) while booting
            n.booting = False
            n.next_tick = self.now
            self._start_agent(n)
            self.record(node, "agent_started", incarnation=f"{node}-{n.generation_of_agent}")

        self.at(self.now + self.options.boot_s, boot)

    def cut(self, node: str) -> None:
        """Unplug every network cable of `node` (Raft traffic in both directions)."""
        self._fault("fault_cut", node)
        for other in self.nodes:
            if other != node:
                self.blocked |= {(node, other), (other, node)}
        self.topology_version += 1

    def heal(self, node: str | None = None) -> None:
        """Reconnect `node`, or everything."""
        self._fault("fault_heal", node)
        if node is None:
            self.blocked.clear()
        else:
            self.blocked = {(a, b) for a, b in self.blocked if node not in (a, b)}
        self.topology_version += 1
        self.stalled = set() if node is None else self.stalled - {node}
        if self.deaf_nodes and (node is None or node in self.deaf_nodes):
            self.deaf_nodes = set() if node is None else self.deaf_nodes - {node}
            for pending in list(self._pending):  # the leader hears the acknowledgements again
                self._try_commit(pending)

    def stall(self, node: str) -> None:
        """`node`'s replica stops applying the log while its Raft link works (issue 8 (a): a
        restarted node followed the leader with its commit index stuck). What it proposes
        still commits, but it never learns an outcome and its view freezes. Cleared by `heal`
        and by a new agent process."""
        self._fault("fault_stall", node)
        self.stalled.add(node)

    def snapshot_fails(self, node: str) -> None:
        """`node`'s Raft snapshot is damaged on disk: its next agent start (restart, power on)
        cannot load it, and every later one neither."""
        self._fault("fault_snapshot_fails", node)
        self.nodes[node].snapshot_broken = True

    def corrupt(self, node: str) -> None:
        """`node`'s replica state changes without a command (a bug, a bad disk): a detail
        nothing decides with (its own record's display time), so only the digests can tell."""
        self._fault("fault_corrupt", node)
        n = self.nodes[node]
        me = n.state.node(node)
        n.state = n.state.with_node(replace(me, changed_at=me.changed_at + 1.0))

    def config(self, node: str, changes: Mapping[str, Any]) -> None:
        """`node`'s config file changes (agent settings by name); its next agent start reads
        it. The other nodes keep theirs: config drift."""
        self._fault("fault_config", node, **{k: str(v) for k, v in changes.items()})
        self.node_overrides.setdefault(node, {}).update(changes)
        self._settings_cache.pop(node, None)

    def deaf(self, node: str) -> None:
        """`node` hears nobody while everyone hears it (an inbound-only cut, issue 8 (b)).

        On the leader: its peers keep hearing its appends, so nobody calls an election, but
        no acknowledgement reaches it, so nothing commits: its own entries wait in its log
        (they commit after `heal`), commands forwarded to it are lost. On a follower this is
        a plain `cut` (it would call elections nobody answers).
        """
        if node != self.leader:
            self.cut(node)
            return
        self._fault("fault_deaf", node)
        self.deaf_nodes.add(node)

    def partition(self, groups: list[list[str]]) -> None:
        self._fault("fault_partition", None, groups="|".join(",".join(g) for g in groups))
        for i, a_group in enumerate(groups):
            for b_group in groups[i + 1 :]:
                for a in a_group:
                    for b in b_group:
                        self.blocked |= {(a, b), (b, a)}
        self.topology_version += 1

    def drop(self, src: str, dst: str) -> None:
        """One-way loss: `src` cannot reach `dst` (a TCP-based link then fails both ways)."""
        self._fault("fault_drop", src, to=dst)
        self.blocked.add((src, dst))
        self.topology_version += 1

    def crash_guest(self, guest: str) -> None:
        spec = self.spec_by_name[guest]
        self._fault("fault_guest_crash", None, guest=guest)
        for node in self.nodes.values():
            obs = node.domains.get(spec.domain)
            if obs is not None and obs.running:
                node.domains[spec.domain] = replace(obs, running=False)
                self.physical_version += 1
                self.record(node.name, "domain_crashed", domain=spec.domain)

    def fail_starts(self, node: str, guest: str, times: int) -> None:
        """The next `times` starts of `guest` on `node` fail (a FakeHypervisor script)."""
        self._fault("fault_start_failures", node, guest=guest, times=times)
        self.nodes[node].start_failures[guest] = times

    def fence_script(self, node: str, attempts: list[str]) -> None:
        """The next fence attempts against `node` go like this: each attempt is "ok", "fail"
        or "hang", or levels separated by "/" ("fail/ok": level 1 fails, level 2 works)."""
        for attempt in attempts:
            if not attempt or any(s not in FENCE_STEPS for s in attempt.split("/")):
                raise ValueError(f"bad fence attempt {attempt!r}: levels of {FENCE_STEPS}")
        self._fault("fault_fence_script", node, attempts=",".join(attempts))
        self.nodes[node].fence_script = list(attempts)

    def clock_jump(self, node: str, seconds: float) -> None:
        """The wall clock of `node` jumps; its monotonic clock does not (as on Linux)."""
        self._fault("fault_clock_jump", node, seconds=seconds)
        n = self.nodes[node]
        n.wall_offset += seconds
        if n.agent is not None:
            n.agent.set_wall_offset(n.wall_offset)

    def hang(self, node: str) -> None:
        """The agent process stops (SIGSTOP): no loop, no Raft, no watchdog pets."""
        self._fault("fault_hang", node)
        n = self.nodes[node]
        if n.powered and n.agent is not None:
            n.hung = True
            self.topology_version += 1

    def resume(self, node: str) -> None:
        self._fault("fault_resume", node)
        n = self.nodes[node]
        if n.powered and n.hung:
            n.hung = False
            self.topology_version += 1
            n.resumed_at = n.local(self.now)
            n.next_tick = self.now
            for fn in list(n.deferred):
                fn()
            n.deferred.clear()

    def restart_agent(self, node: str) -> None:
        """kill -9 and restart of the agent (or a start after a clean shutdown). Guests
        survive (libvirtd) unless configured otherwise."""
        self._fault("fault_agent_restart", node)
        n = self.nodes[node]
        if not n.powered or n.booting:
            return
        if not self.options.keep_guests_on_agent_restart and n.domains:
            n.domains.clear()
            self.physical_version += 1
        n.next_tick = self.now
        self._start_agent(n)

    def resend(self, node: str, type_name: str) -> None:
        """pysyncobj re-sends a command: the last committed command of type `type_name` that
        `node` proposed commits once more (through `node`, when it reaches a leader)."""
        self._fault("fault_resend", node, type=type_name)
        if node == ADMIN:
            self._resend_admin(type_name)
            return
        for index in range(len(self.log) - 1, -1, -1):
            command = self.log[index]
            if self._log_by[index] == node and command.type_name == type_name:
                copy = _Pending(node, -1, None, command, True, duplicate=True)
                self._pending.append(copy)
                self.at(self.now + 0.002, functools.partial(self._try_commit, copy))
                return

    def _resend_admin(self, type_name: str) -> None:
        """An admin command of `type_name` commits again late: the one before the latest of
        its type (a decision a newer one replaced), or the latest if it is the only one."""
        indexes = [i for i in self._admin_indexes if self.log[i].type_name == type_name]
        if not indexes:
            return
        index = indexes[-2] if len(indexes) >= 2 else indexes[-1]
        copy = _Pending(self._log_by[index], -1, None, self.log[index], True, duplicate=True)
        self._pending.append(copy)
        self.at(self.now + 0.002, functools.partial(self._try_commit, copy))

    def shutdown(self, node: str) -> None:
        """Clean stop of the agent (systemctl stop): it stops its guests, commits `Leave` and
        exits. The host stays powered; `restart_agent` brings the agent back."""
        self._fault("fault_shutdown", node)
        n = self.nodes[node]
        if self._alive(n):
            assert n.agent is not None
            n.agent.begin_leave()

    def admin(self, command: Command, **data: TraceValue) -> None:
        """An admin command (the CLI against the API of some node). Like an admin who sees
        "unknown outcome", it is sent again every second, through the leader or else the first
        node whose agent runs, until it commits; admin commands commit in the order given."""
        self._fault("fault_admin", None, type=command.type_name, **data)
        self._admin_queue.append(_Pending("", -1, None, command, answered=True))
        if len(self._admin_queue) == 1:
            self.at(self.now + 0.002, self._admin_attempt)

    def _admin_attempt(self) -> None:
        if not self._admin_queue:
            return
        pending = self._admin_queue[0]
        via = self.leader or next(
            (n for n in sorted(self.nodes) if self._raft_up(self.nodes[n])), None
        )
        if via is not None:
            if not pending.decided:
                # The admin decides on what they see when they send it (the CLI reads the
                # version from an agent), and a retry repeats that decision unchanged.
                pending.command = admin_verbs.decided_on(self.committed_state, pending.command)
                pending.decided = True
            pending.node = via
            self._try_commit(pending)
        if pending.index is None:
            self.at(self.now + 1.0, self._admin_attempt)
            return
        self._admin_indexes.append(pending.index - 1)
        self._admin_queue.pop(0)
        command = pending.command
        if pending.refused.startswith("stale") and isinstance(command, SetDesired | SetMaintenance):
            # A late copy of an older decision won the race (`resend admin`): the admin sees
            # "stale", looks again and repeats the command, decided on the newer version.
            again = replace(command, expect_version=None)
            self._admin_queue.insert(0, _Pending("", -1, None, again, answered=True))
        if self._admin_queue:
            self.at(self.now + 0.002, self._admin_attempt)

    def disable(self, guest: str) -> None:
        self.admin(SetDesired(guest, DesiredState.STOPPED, "admin", 0.0), guest=guest)

    def enable(self, guest: str) -> None:
        self.admin(SetDesired(guest, DesiredState.RUNNING, "admin", 0.0), guest=guest)

    def maintenance(self, node: str, on: bool) -> None:
        """Admin: put `node` in maintenance (drain it) or take it out."""
        self.admin(SetMaintenance(node, on, by="admin", at=0.0), node=node, on=on)

    def migrate(self, guest: str, node: str) -> None:
        """Admin: `haagent guest migrate GUEST NODE`, conditional on the generation the
        committed state shows now, as the CLI reads it from an agent."""
        record = self.committed_state.guests.get(guest)
        generation = record.generation if record is not None else 0  # refused if undefined
        self.admin(
            MigrateGuest(guest, node, generation, by="admin", at=0.0),
            guest=guest,
            node=node,
            generation=generation,
        )

    def migrate_fault(self, node: str, guest: str, behaviours: list[str]) -> None:
        """The next migrations of `guest` from `node`: "fail" (libvirt fails it) or a duration
        in seconds (past `migration_timeout_s` the job is aborted)."""
        self._fault("fault_migrate", node, guest=guest, script=",".join(behaviours))
        self.migrator.script[(node, guest)] = list(behaviours)

    def confirm_fenced(self, node: str) -> None:
        """Admin: "I have verified that `node` is off" (`haagent node confirm-fenced`), for the
        failure epoch the committed state shows now, as the CLI reads it from an agent."""
        epoch = self.committed_state.node(node).failure_epoch
        self.admin(ConfirmFenced(node, epoch, by="admin", at=0.0), node=node, epoch=epoch)

    # -- DRBD faults (FakeDrbd) ---------------------------------------------------------------

    def _fence_peer(self, node: str, guest: str, on_exit: Callable[[int], None]) -> None:
        run_fence_peer(self, node, guest, on_exit)

    def drbd_handler(self, node: str, broken: bool) -> None:
        """`node`'s fence-peer handler exits 1 from now on (`broken`), or works again."""
        self._fault("fault_drbd_handler", node, broken=broken)
        (self.broken_handlers.add if broken else self.broken_handlers.discard)(node)

    def drbd_outdate(self, node: str, guest: str) -> None:
        """An admin runs `drbdadm outdate` for `guest`'s resource on `node`."""
        refused = self.drbd.outdate(node, self.spec_by_name[guest].resource)
        self._fault("fault_drbd_outdate", node, guest=guest, ok=not refused, why=refused)

    def drbd_events2(self, node: str, how: str, seconds: float) -> None:
        """`node`'s events2 `dies` (its agent's watcher restarts it `seconds` later: the state
        is unknown meanwhile) or `stalls` (its lines arrive `seconds` late)."""
        if how not in ("dies", "stalls"):
            raise ValueError(f"drbd_events2: 'dies' or 'stalls', not {how!r}")
        self._fault("fault_drbd_events2", node, how=how, seconds=seconds)
        n = self.nodes[node]
        agent_gen = n.generation_of_agent
        for watcher in self.drbd.node_watchers(node):
            if how == "dies":
                watcher.die()
            else:
                watcher.stall()

        def back() -> None:
            if n.generation_of_agent != agent_gen or not n.powered:
                return  # a new agent started its own watchers
            if how == "dies":
                self.drbd.agent_started(node)  # restarted: a fresh dump
            else:
                for watcher in self.drbd.node_watchers(node):
                    watcher.catch_up()

        self.at(self.now + seconds, back)

    # -- queries ------------------------------------------------------------------------------

    def running(self, guest: str, paused: bool = False) -> list[str]:
        """Powered hosts whose hypervisor runs the guest's domain right now (hung or not),
        unpaused (`paused`: those that hold it paused, e.g. a migration's incoming copy)."""
        domain = self.spec_by_name[guest].domain
        out: list[str] = []
        for n in self.nodes.values():
            obs = n.domains.get(domain)
            if obs is not None and obs.running and n.powered and obs.paused == paused:
                out.append(n.name)
        return out

    def powered(self, node: str) -> bool:
        return self.nodes[node].powered

    def hung(self, node: str) -> bool:
        return self.nodes[node].hung


def _short(command: Command, detail: str) -> str:
    if isinstance(command, DefineGuest):
        return command.spec.name
    return detail[:120]


def default_nodes(
    names: Iterable[str],
    memory_mib: int = 4096,
    fence: FenceMethod = FenceMethod.AGENT,
    witness: Iterable[str] = (),
    watchdog_timeout_s: float = 5.0,
) -> dict[str, NodeSettings]:
    witnesses = set(witness)
    return {
        n: NodeSettings(NodeRole.WITNESS)
        if n in witnesses
        else NodeSettings(NodeRole.HYPERVISOR, memory_mib, fence, watchdog_timeout_s)
        for n in names
    }
