"""Invariants checked after every simulated step.

They look at the simulated world from outside — what the fake hypervisors actually run, what
was actually committed and when — not at what the agents believe, so a bug in the agent's
reasoning shows up as a physical violation.

1. Never two running copies of a guest.
2. Every recovery is preceded by a committed successful fence of the previous owner (or, for a
   node fenced by watchdog, its lease + watchdog timeout + margin has elapsed since its last
   committed heartbeat), unless that owner had committed the guest stopped.
3. Generations never decrease, grow on every change of owner, and no host starts a guest at a
   generation older than one already started.
4. A node whose agent runs (not hung) but holds no valid lease runs no protected guest after
   lease + stop grace (for a new agent process that never held one: its start + lease + grace;
   for an agent that was stopped: its resume + grace).
5. After every fault healed, every wanted guest runs again within a stated bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from haagent.commands import Heartbeat, Join
from haagent.model import ClusterState, DesiredState, FenceMethod, GuestState, NodeState
from haagent.sim.world import World

EPSILON_S = 1e-6


@dataclass
class InvariantChecker:
    world: World
    violations: list[str] = field(default_factory=list)
    _last_state: ClusterState = field(default_factory=ClusterState)
    _log_seen: int = 0
    _heartbeat_at: dict[str, float] = field(default_factory=dict)  # true time of last commit
    _max_started: dict[str, int] = field(default_factory=dict)
    _trace_seen: int = 0

    def __post_init__(self) -> None:
        self.world.observe(self)

    def __call__(self, world: World) -> None:
        self._two_copies(world)
        self._commits(world)
        self._starts(world)
        self._leases(world)

    def fail(self, message: str) -> None:
        text = f"t={self.world.now:.3f}s seed={self.world.seed}: {message}"
        if text not in self.violations:
            self.violations.append(text)

    # 1 --------------------------------------------------------------------------------------

    def _two_copies(self, world: World) -> None:
        for spec in world.guest_specs:
            hosts = world.running(spec.name)
            if len(hosts) > 1:
                self.fail(f"two running copies of {spec.name}: {', '.join(hosts)}")

    # 2 and 3 (committed side) ------------------------------------------------------------

    def _commits(self, world: World) -> None:
        if self._log_seen == len(world.log):
            return
        for command in world.log[self._log_seen :]:
            if isinstance(command, Heartbeat | Join):
                self._heartbeat_at[command.node] = world.now
        self._log_seen = len(world.log)
        before, after = self._last_state, world.committed_state
        for name, g in after.guests.items():
            old = before.guests.get(name)
            if old is None:
                continue
            if g.generation < old.generation:
                self.fail(f"generation of {name} went back {old.generation} -> {g.generation}")
            if g.owner != old.owner:
                if g.generation <= old.generation:
                    self.fail(f"{name} changed owner without a new generation")
                self._recovery(world, before, name)
        self._last_state = after

    def _recovery(self, world: World, before: ClusterState, guest: str) -> None:
        old = before.guests[guest]
        if old.owner is None or old.state in (GuestState.STOPPED, GuestState.ERROR):
            return  # nobody may run it: no fence needed
        owner = before.node(old.owner)
        if owner.state is NodeState.DOWN:
            return
        if owner.state is not NodeState.FENCED or owner.fence.last_result != "ok":
            self.fail(
                f"{guest} moved off {old.owner} ({owner.state}) while it was {old.state} "
                "without a committed fence"
            )
            return
        if owner.fence.method is FenceMethod.WATCHDOG:
            s = world.agent_settings(old.owner)
            wd = world.node_settings[old.owner].watchdog_timeout_s
            last = self._heartbeat_at.get(old.owner, -math.inf)
            # Measured on the true clock; allow for the fastest drifting clock.
            need = (s.lease_s + wd + s.watchdog_margin_s) * (1 - 2 * world.options.drift_ppm * 1e-6)
            if world.now - last < need:
                self.fail(
                    f"{guest} recovered from {old.owner} {world.now - last:.2f}s after its "
                    f"last heartbeat; the watchdog deadline is {need:.2f}s"
                )

    # 3 (physical side) ------------------------------------------------------------------

    def _starts(self, world: World) -> None:
        for ev in world.trace[self._trace_seen :]:
            if ev.name != "domain_started":
                continue
            data = dict(ev.data)
            domain, gen = str(data["domain"]), data["generation"]
            assert isinstance(gen, int)
            if gen < self._max_started.get(domain, 0):
                self.fail(
                    f"{ev.node} started {domain} at generation {gen}, older than "
                    f"{self._max_started[domain]}"
                )
            self._max_started[domain] = max(gen, self._max_started.get(domain, 0))
        self._trace_seen = len(world.trace)

    # 4 --------------------------------------------------------------------------------------

    def _leases(self, world: World) -> None:
        protected = {g.domain for g in world.guest_specs}
        for node in world.nodes.values():
            if not node.powered or node.hung or node.agent is None:
                continue
            if not any(d.running and name in protected for name, d in node.domains.items()):
                continue
            agent = node.agent
            s = agent.settings
            local_now = node.local(world.now)
            if agent.lease_valid(local_now):
                continue
            since = (
                agent.lease_until
                if agent.lease_until > -math.inf
                else (agent.started_at + s.lease_s)
            )
            # A stopped (SIGSTOP) agent cannot act; its host is covered by fencing and the
            # watchdog (invariants 1 and 2). Once it continues, the grace starts again.
            since = max(since, node.resumed_at)
            if local_now > since + s.stop_grace_s + EPSILON_S:
                self.fail(
                    f"{node.name} runs a protected guest {local_now - since:.2f}s after "
                    f"its lease ended (stop grace {s.stop_grace_s}s)"
                )

    # 5 --------------------------------------------------------------------------------------

    def check_healed(self, healed_at: float, bound_s: float) -> None:
        """Call at the end of a run whose faults all healed at `healed_at`."""
        world = self.world
        if world.now < healed_at + bound_s:
            raise ValueError("run the world until healed_at + bound_s first")
        state = world.committed_state
        for spec in world.guest_specs:
            g = state.guests.get(spec.name)
            if g is None:
                self.fail(f"{spec.name} was never registered")
                continue
            if g.desired is not DesiredState.RUNNING or g.state is GuestState.ERROR:
                continue
            if len(world.running(spec.name)) != 1:
                self.fail(
                    f"{spec.name} not running {bound_s:.0f}s after every fault healed "
                    f"(committed: {g.state} on {g.owner})"
                )
