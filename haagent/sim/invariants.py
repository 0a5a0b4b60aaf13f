"""Invariants checked after every simulated step.

They look at the simulated world from outside — what the fake hypervisors actually run, what
was actually committed and when — not at what the agents believe, so a bug in the agent's
reasoning shows up as a physical violation.

1. Never two running copies of a guest: never unpaused on two hosts (a live migration's
   incoming copy is paused until its hand-over commits), and a paused copy is resumed only by
   the owner a committed `MigrationDone` named, at its generation (checked with 3).
2. Every recovery is preceded by a committed successful fence of the previous owner (or, for a
   node fenced by watchdog, its lease + watchdog timeout + margin has elapsed since its last
   accepted heartbeat), unless that owner had committed the guest stopped or left cleanly.
3. Generations never decrease and grow on every change of owner; no host starts a guest at a
   generation older than one already started, and no host starts a guest without a committed
   `GuestStarting` for that host and generation (ownership is committed, not assumed).
4. A node whose agent runs (not hung) but holds no valid lease runs no protected guest after
   lease + stop grace (for a new agent process that never held one: its start + lease + grace;
   for an agent that was stopped: its resume + grace; for a start authorised under the lease
   that completed after it: its appearance + grace). While the committed state says the
   cluster is disarmed or the node frozen nobody may be declared failed (`apply` refuses it),
   so nobody can recover its guests and it may keep them: the grace then runs from the end of
   that hold in the committed state (a node counts the disarm on its own clock from its own
   apply, a few milliseconds after the commit). A disarm a node applied while holding a valid
   lease is also a promise to that node for its whole duration: an early `arm` or a shorter
   disarm it cannot hear (cut off) does not end it (swarm seed 5501); its guests stay safe
   because they move only after a power fence or a re-armed watchdog (core.arming). A disarm
   learned without a lease promises nothing (swarm seed 2860).
5. After every fault healed, every wanted guest runs again, exactly once and where the
   committed state says, within a stated bound (`check_healed`).
6. Data before compute: never two DRBD primaries of a resource, and no replica is ever promoted
   while another holds more data (checked against the FakeDrbd's own record of writes).
   Guest RAID1: never a start from stale legs only (an instance whose legs hold less data
   than the newest leg), never two writers on one leg (FakeRaid1's record).
7. A fence never switches off a node the committed state holds up: it acts only on a node
   declared failed, and such a node rejoins only once no fence of it can act any more (issue
   8: two fences in flight after a leader change switched a rejoined, healthy node off).

The checker replays the committed log through the real `apply` itself, one command at a time,
so a transition hidden between two steps (assigned and started within one step) is still seen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from haagent.agent import AgentCore
from haagent.commands import AssignGuests, GuestStarting, Heartbeat, Join, MigrationDone
from haagent.model import Arming, ClusterState, DesiredState, FenceMethod, GuestState, NodeState
from haagent.sim.world import TraceEvent, World
from haagent.statemachine import apply

EPSILON_S = 1e-6

QUIET_EVENTS = frozenset({"lease_acquired"})
"""Events left out of a shortened trace: they say nothing about a violation."""


@dataclass
class InvariantChecker:
    world: World
    violations: list[str] = field(default_factory=list)
    first_violation_index: int | None = None  # len(world.trace) when the first one was seen
    first_violation_t: float | None = None
    _state: ClusterState = field(default_factory=ClusterState)
    _log_seen: int = 0
    _heartbeat_at: dict[str, float] = field(default_factory=dict)  # true time of last commit
    # The lease length of the agent process whose heartbeat or join committed last, per node:
    # the lease that commit could extend. Not the node's config file now: a file changed since
    # (config drift) takes effect only in a later process, whose join the cluster refuses.
    _lease_s: dict[str, float] = field(default_factory=dict)
    _max_started: dict[str, int] = field(default_factory=dict)
    _starting: set[tuple[str, str, int]] = field(default_factory=set)  # (domain, node, gen)
    _handed_over: set[tuple[str, str, int]] = field(default_factory=set)  # (domain, node, gen)
    _trace_seen: int = 0
    _physical_seen: int = -1
    _protected: frozenset[str] = frozenset()
    _promotions_seen: dict[str, int] = field(default_factory=dict)
    _raid1_starts_seen: dict[str, int] = field(default_factory=dict)
    _raid1_problems_seen: int = 0

    def __post_init__(self) -> None:
        self._protected = frozenset(g.domain for g in self.world.guest_specs)
        self._hold_seen_at: dict[str, float] = {}  # node -> last step with a committed hold
        # node -> (its agent process, the disarm, its local time at first sight, lease then)
        self._disarm_seen: dict[str, tuple[AgentCore, Arming, float, bool]] = {}
        self.world.observe(self)

    def __call__(self, world: World) -> None:
        if self._physical_seen != world.physical_version:
            self._physical_seen = world.physical_version
            self._two_copies(world)
        self._commits(world)
        self._starts(world)
        self._leases(world)
        if world.drbd.resources:
            self._replicas(world)
        if world.raid1.guests:
            self._legs(world)

    def fail(self, message: str) -> None:
        text = f"t={self.world.now:.3f}s seed={self.world.seed}: {message}"
        if text not in self.violations:
            if not self.violations:
                self.first_violation_index = len(self.world.trace)
                self.first_violation_t = self.world.now
            self.violations.append(text)

    # 6 --------------------------------------------------------------------------------------

    def _replicas(self, world: World) -> None:
        """Data before compute: never two DRBD primaries, never a promotion of a replica
        holding less data than the newest (even the newest sits on a host that is down)."""
        for res in world.drbd.resources.values():
            primaries = world.drbd.primaries(res.name, world.powered)
            if len(primaries) > 1:
                self.fail(f"two DRBD primaries of {res.name}: {', '.join(primaries)}")
            seen = self._promotions_seen.get(res.name, 0)
            for node, version, newest in res.promotions[seen:]:
                if version < newest:
                    self.fail(
                        f"{node} promoted {res.name} with {version} writes while the "
                        f"newest replica has {newest}: started from stale data"
                    )
            self._promotions_seen[res.name] = len(res.promotions)

    def _legs(self, world: World) -> None:
        """Guest RAID1: never a start from stale legs only, never two writers on one leg."""
        for g in world.raid1.guests.values():
            seen = self._raid1_starts_seen.get(g.name, 0)
            for node, version, newest in g.starts[seen:]:
                if version < newest:
                    self.fail(
                        f"{node} started {g.name} from legs with {version} writes while the "
                        f"newest leg has {newest}: started from stale legs only"
                    )
            self._raid1_starts_seen[g.name] = len(g.starts)
        for problem in world.raid1_problems[self._raid1_problems_seen :]:
            self.fail(problem)
        self._raid1_problems_seen = len(world.raid1_problems)

    # 1 --------------------------------------------------------------------------------------

    def _two_copies(self, world: World) -> None:
        for spec in world.guest_specs:
            hosts = world.running(spec.name)
            if len(hosts) > 1:
                self.fail(f"two running copies of {spec.name}: {', '.join(hosts)}")

    # 2 and 3 (committed side) ------------------------------------------------------------

    def _commits(self, world: World) -> None:
        log = world.log
        while self._log_seen < len(log):
            command = log[self._log_seen]
            self._log_seen += 1
            before = self._state
            after, result = apply(before, command)
            self._state = after
            if not result.accepted:
                continue
            if isinstance(command, Heartbeat | Join):
                self._heartbeat_at[command.node] = world.now
                agent = world.nodes[command.node].agent
                if agent is not None and agent.incarnation == command.incarnation:
                    self._lease_s[command.node] = agent.settings.lease_s
            elif isinstance(command, GuestStarting):
                # The start runs at the generation the committed intent gave it.
                started = after.guests[command.guest]
                self._starting.add((started.spec.domain, command.node, started.generation))
            elif isinstance(command, MigrationDone):
                moved = after.guests[command.guest]
                if moved.owner is None or moved.generation <= command.generation:
                    self.fail(f"{command.guest} was handed over without a new generation")
                else:
                    self._handed_over.add((moved.spec.domain, moved.owner, moved.generation))
            elif isinstance(command, AssignGuests):
                for a in command.assignments:
                    old, new = before.guests.get(a.guest), after.guests.get(a.guest)
                    if old is None or new is None or old.owner == new.owner:
                        continue
                    if new.generation <= old.generation:
                        self.fail(f"{a.guest} changed owner without a new generation")
                    self._recovery(world, before, a.guest)
            for name, g in after.guests.items():
                old_g = before.guests.get(name)
                if old_g is not None and g.generation < old_g.generation:
                    self.fail(
                        f"generation of {name} went back {old_g.generation} -> {g.generation}"
                    )

    def _recovery(self, world: World, before: ClusterState, guest: str) -> None:
        old = before.guests[guest]
        if old.owner is None or old.state in (GuestState.STOPPED, GuestState.ERROR):
            return  # its owner committed that it does not run it: no fence needed
        owner = before.node(old.owner)
        if owner.state is NodeState.DOWN:
            return  # left cleanly, which requires every guest stopped
        if owner.state is not NodeState.FENCED or owner.fence.last_result != "ok":
            self.fail(
                f"{guest} moved off {old.owner} ({owner.state}) while it was {old.state} "
                "without a committed fence"
            )
            return
        if owner.fence.method is FenceMethod.WATCHDOG:
            s = world.agent_settings(old.owner)
            wd = world.armed_watchdog_s(old.owner)
            last = self._heartbeat_at.get(old.owner, -math.inf)
            lease_s = self._lease_s.get(old.owner, s.lease_s)
            # Measured on the true clock; allow for the fastest drifting clock.
            need = (lease_s + wd + s.watchdog_margin_s) * (1 - 2 * world.options.drift_ppm * 1e-6)
            if world.now - last < need:
                self.fail(
                    f"{guest} recovered from {old.owner} {world.now - last:.2f}s after its "
                    f"last heartbeat; the watchdog deadline is {need:.2f}s"
                )

    # 3 (physical side) ------------------------------------------------------------------

    def _starts(self, world: World) -> None:
        trace = world.trace
        for index in range(self._trace_seen, len(trace)):
            ev = trace[index]
            if ev.name == "domain_resumed":
                self._resumed(ev)
                continue
            if ev.name == "power_off":
                self._fenced(world, ev)
                continue
            if ev.name != "domain_started":
                continue
            data = dict(ev.data)
            domain, gen = str(data["domain"]), data["generation"]
            assert isinstance(gen, int) and ev.node is not None
            if gen < self._max_started.get(domain, 0):
                self.fail(
                    f"{ev.node} started {domain} at generation {gen}, older than "
                    f"{self._max_started[domain]}"
                )
            if (domain, ev.node, gen) not in self._starting:
                self.fail(
                    f"{ev.node} started {domain} at generation {gen} without a committed "
                    "guest_starting"
                )
            self._max_started[domain] = max(gen, self._max_started.get(domain, 0))
        self._trace_seen = len(trace)

    def _fenced(self, world: World, ev: TraceEvent) -> None:
        """7: a fence's power-off hit a node that is not up in the committed state. Checked
        after the step: a node switched off cannot have joined in between."""
        reason = str(dict(ev.data).get("reason", ""))
        if ev.node is None or not reason.startswith("fenced by"):
            return
        if world.committed_state.node(ev.node).state is NodeState.UP:
            self.fail(f"{ev.node} was switched off ({reason}) while it was up")

    def _resumed(self, ev: TraceEvent) -> None:
        data = dict(ev.data)
        domain, gen = str(data["domain"]), data["generation"]
        assert isinstance(gen, int) and ev.node is not None
        if (domain, ev.node, gen) not in self._handed_over:
            self.fail(
                f"{ev.node} resumed {domain} at generation {gen} without a committed "
                "migration_done handing it over"
            )
        self._max_started[domain] = max(gen, self._max_started.get(domain, 0))

    # 4 --------------------------------------------------------------------------------------

    def _leases(self, world: World) -> None:
        protected = self._protected
        for node in world.nodes.values():
            if not node.powered or node.hung or node.agent is None:
                continue
            agent = node.agent
            local_now = node.local(world.now)
            promised = self._promised_hold(node.name, agent, node.state, local_now)
            if not node.domains:
                continue
            committed = world.committed_state
            if committed.arming.disarmed or committed.node(node.name).frozen or promised:
                self._hold_seen_at[node.name] = local_now
                continue
            if agent.lease_valid(local_now):
                continue
            running = [n for n, d in node.domains.items() if d.running and n in protected]
            if not running:
                continue
            s = agent.settings
            since = (
                agent.lease_until
                if agent.lease_until > -math.inf
                else (agent.started_at + s.lease_s)
            )
            # A stopped (SIGSTOP) agent cannot act; its host is covered by fencing and the
            # watchdog (invariants 1 and 2). Once it continues, the grace starts again.
            since = max(since, node.resumed_at, self._hold_seen_at.get(node.name, -math.inf))
            # A start authorised under the lease (the executor checks it at the call) may
            # complete after the lease: the watchdog, not petted meanwhile, covers it until
            # then (README, "Safety model"); from its appearance the grace applies again.
            since = max([since] + [node.appeared_at.get(n, -math.inf) for n in running])
            if local_now > since + s.stop_grace_s + EPSILON_S:
                self.fail(
                    f"{node.name} runs a protected guest {local_now - since:.2f}s after "
                    f"its lease ended (stop grace {s.stop_grace_s}s)"
                )

    def _promised_hold(
        self, name: str, agent: AgentCore, applied: ClusterState, local_now: float
    ) -> bool:
        """Does a disarm this agent process applied while holding a valid lease still run, on
        its own clock (whatever the committed state says since)?"""
        arming = applied.arming
        seen = self._disarm_seen.get(name)
        fresh = seen is None or seen[0] is not agent or seen[1].version != arming.version
        if arming.disarmed and fresh:
            seen = (agent, arming, local_now, agent.lease_valid(local_now))
            self._disarm_seen[name] = seen
        if seen is None or seen[0] is not agent or not seen[3]:
            return False
        return local_now < seen[2] + seen[1].for_s

    # 5 --------------------------------------------------------------------------------------

    def unhealed(self) -> list[str]:
        """What is not healed right now: every enabled guest (not in error) must run exactly
        once, on its committed owner, and be committed running."""
        world = self.world
        state = world.committed_state
        problems: list[str] = []
        for spec in world.guest_specs:
            g = state.guests.get(spec.name)
            if g is None:
                problems.append(f"{spec.name} was never registered")
                continue
            if g.desired is not DesiredState.RUNNING or g.state is GuestState.ERROR:
                continue
            hosts = world.running(spec.name)
            paused = world.running(spec.name, paused=True)
            if paused:
                problems.append(f"{spec.name} is held paused on {', '.join(paused)}")
            if hosts != [g.owner] or g.state is not GuestState.RUNNING:
                text = (
                    f"{spec.name} runs on {', '.join(hosts) or 'no node'} (committed: {g.state}"
                    f" on {g.owner} at generation {g.generation}: {g.reason})"
                )
                if g.failed_nodes:
                    text += f"; gave up on it: {', '.join(g.failed_nodes)}"
                text += self._last_hold(spec.name)
                problems.append(text)
        return problems

    def _last_hold(self, guest: str) -> str:
        """Why `guest` is held, as the core last said: the leader found no node for it
        ("last unplaced"), or its owner's start waits on storage ("start waits"), whichever
        came after the guest's last assignment; "" when neither did."""
        for ev in reversed(self.world.trace):
            data = dict(ev.data)
            if data.get("guest") != guest:
                continue
            if ev.name == "unplaced":
                return f"; last unplaced: {data.get('why')}"
            if ev.name == "start_waits":
                return f"; start waits: {data.get('why')}"
            if ev.name == "assign":
                return ""
        return ""

    def check_healed(self, healed_at: float, bound_s: float) -> None:
        """Call at the end of a run whose faults all healed at `healed_at`, once the world ran
        until `healed_at + bound_s`."""
        if self.world.now < healed_at + bound_s:
            raise ValueError("run the world until healed_at + bound_s first")
        for problem in self.unhealed():
            self.fail(f"not healed {bound_s:g}s after the last fault: {problem}")

    # reporting ------------------------------------------------------------------------------

    def report(self, keep_last: int = 40) -> str:
        """The violations, the seed, and a shortened trace up to the first violation: every
        fault, and the last `keep_last` other events before it."""
        if not self.violations:
            return f"seed {self.world.seed}: no violation"
        upto = self.first_violation_index
        lines = [f"seed {self.world.seed}: {len(self.violations)} invariant violation(s):"]
        lines += [f"  {v}" for v in self.violations]
        lines.append("shortened trace (every fault, then the events just before the first):")
        lines += [f"  {line}" for line in shorten_trace(self.world.trace, upto, keep_last)]
        return "\n".join(lines)


def shorten_trace(
    trace: list[TraceEvent], upto: int | None = None, keep_last: int = 40
) -> list[str]:
    """JSON lines: the faults of `trace[:upto]`, plus its last `keep_last` other events."""
    events = trace[: len(trace) if upto is None else upto]
    others = [
        i
        for i, e in enumerate(events)
        if not e.name.startswith("fault_") and e.name not in QUIET_EVENTS
    ]
    window = others[-keep_last:]
    keep = set(window) | {i for i, e in enumerate(events) if e.name.startswith("fault_")}
    out: list[str] = []
    skipped = 0
    for i, e in enumerate(events):
        if i not in keep:
            skipped += 1
            continue
        if skipped:
            out.append(f"... {skipped} events")
            skipped = 0
        out.append(json.dumps(e.to_json(), sort_keys=True))
    return out
