#!/usr/bin/env python3
"""Scale benchmark: 64 nodes, 10 000 guests, in the simulator.

    .venv/bin/python benchmarks/scale.py [--nodes 64] [--guests 10000] [--repeat 20]

Prints:
1. Decision time: the leader's `AgentCore.tick` on the pass that recovers one fenced node
   (~160 guests -> one AssignGuests batch), median and max over --repeat fresh leaders; and
   the time to apply (commit) that batch to the state, which every replica does. Target:
   decision < 100 ms.
2. The same inside a full simulated run (haagent.sim.World, all 64 agent cores ticking):
   power off one node, run until every one of its guests runs elsewhere; the simulated
   recovery time and the wall time of the leader's recovering pass.
3. Memory: one replicated state of this size (tracemalloc), and one agent core's own memory.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace

from haagent.agent import AgentCore, AgentSettings, LocalView, NodeSettings
from haagent.commands import AssignGuests, Heartbeat
from haagent.model import (
    ClusterState,
    FenceMethod,
    FenceRecord,
    GuestRecord,
    GuestSpec,
    GuestState,
    NodeRecord,
    NodeRole,
    NodeState,
)
from haagent.ports import ConsensusView, DomainObservation, HeartbeatSeen, Outcome, OutcomeKind
from haagent.sim.world import SimOptions, World
from haagent.statemachine import apply

NODE_MIB = 65536
GUEST_MIB = 256


def build(
    n_nodes: int, n_guests: int
) -> tuple[dict[str, NodeSettings], list[GuestSpec], ClusterState]:
    names = [f"n{i:02}" for i in range(1, n_nodes + 1)]
    nodes = {n: NodeSettings(NodeRole.HYPERVISOR, NODE_MIB, FenceMethod.AGENT, 5.0) for n in names}
    specs = [GuestSpec(f"g{i:05}", f"g{i:05}", GUEST_MIB, priority=i % 3) for i in range(n_guests)]
    guests = {
        s.name: GuestRecord(
            spec=s,
            owner=names[i % n_nodes],
            generation=1,
            state=GuestState.RUNNING,
            reason="running",
        )
        for i, s in enumerate(specs)
    }
    records = {
        n: NodeRecord(name=n, state=NodeState.UP, incarnation=f"{n}-1", heartbeat_seq=1)
        for n in names
    }
    return nodes, specs, ClusterState(nodes=records, guests=guests)


def fenced(state: ClusterState, node: str) -> ClusterState:
    rec = replace(
        state.nodes[node],
        state=NodeState.FENCED,
        failure_epoch=1,
        fence=FenceRecord(attempts=1, last_result="ok", method=FenceMethod.AGENT),
    )
    return state.with_node(rec)


def decision(
    nodes: dict[str, NodeSettings], specs: list[GuestSpec], state: ClusterState, repeat: int
) -> None:
    victim = "n07"
    lost = len(state.guests_of(victim))
    after = fenced(state, victim)
    settings = AgentSettings(
        cluster="scale", node="n01", nodes=nodes, guests=tuple(specs), initial_placement_wait_s=0.0
    )
    heartbeats = {n: HeartbeatSeen(1, 100.0) for n in nodes}
    view = ConsensusView(state=after, leader="n01", is_leader=True, heartbeats=heartbeats)
    ticks, applies, sizes = [], [], []
    for _ in range(repeat):
        core = AgentCore(settings, "n01-1", started_at=0.0)
        step = core.tick(
            100.0, ConsensusView(state=after, heartbeats=heartbeats), LocalView({}, 100.0)
        )
        hb = next(p for p in step.proposals if isinstance(p.command, Heartbeat))
        core.proposal_done(hb.key, Outcome(OutcomeKind.ACCEPTED), 100.0)
        # A leader in steady state has seen the cluster before the failure.
        core.tick(100.01, replace(view, state=state), LocalView({}, 100.01))
        fresh = replace(after, applied=after.applied + 1)  # a new state: indexes rebuilt
        view = replace(view, state=fresh)
        gc.collect()
        t0 = time.perf_counter()
        step = core.tick(100.02, view, LocalView({}, 100.02))
        ticks.append(time.perf_counter() - t0)
        (assign,) = [p.command for p in step.proposals if isinstance(p.command, AssignGuests)]
        sizes.append(len(assign.assignments))
        t0 = time.perf_counter()
        new, result = apply(fresh, assign)
        applies.append(time.perf_counter() - t0)
        assert result.accepted and not new.guests_of(victim)
    print(
        f"decision: {len(nodes)} nodes, {len(specs)} guests, {lost} guests on the fenced "
        f"node -> one AssignGuests of {sizes[0]}"
    )
    print(
        f"  leader tick (decide): median {1000 * statistics.median(ticks):.1f} ms, "
        f"max {1000 * max(ticks):.1f} ms over {repeat} runs (target < 100 ms)"
    )
    print(
        f"  apply of the batch (commit, on every replica): median "
        f"{1000 * statistics.median(applies):.1f} ms, max {1000 * max(applies):.1f} ms"
    )


def simulated(nodes: dict[str, NodeSettings], specs: list[GuestSpec], state: ClusterState) -> None:
    world = World(
        1,
        nodes,
        specs,
        settings={"initial_placement_wait_s": 0.0},
        options=SimOptions(hardware_watchdog=False),
    )
    # Install the cluster as if from a snapshot: every replica has the state, every host runs
    # its guests. The agents then join with their own incarnations and heartbeat as usual.
    world.committed_state = state
    for node in world.nodes.values():
        node.state = state
        for g in state.guests_of(node.name):
            node.domains[g.spec.domain] = DomainObservation(
                g.spec.domain, True, node.name, 1, "sim"
            )
    world.run_until(3.0)
    leader = world.leader
    assert leader is not None
    victim = next(n for n in sorted(nodes) if n != leader)
    lost = [g.name for g in world.committed_state.guests_of(victim)]
    timings: list[tuple[float, int]] = []
    core = world.nodes[leader].agent
    assert core is not None
    original = core.tick

    def timed(now: float, view: ConsensusView, local: LocalView):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        step = original(now, view, local)
        n = sum(
            len(p.command.assignments)
            for p in step.proposals
            if isinstance(p.command, AssignGuests)
        )
        timings.append((time.perf_counter() - t0, n))
        return step

    core.tick = timed  # type: ignore[method-assign]
    t_off = world.now
    wall0 = time.perf_counter()
    world.power_off(victim)
    while True:
        world.run_until(world.now + 0.25)
        running = sum(1 for g in lost if world.running(g))
        if running == len(lost) or world.now > t_off + 30:
            break
    wall = time.perf_counter() - wall0
    recovering = [t for t, n in timings if n]
    print(f"simulated run: {len(nodes)} agent cores; power off {victim} ({len(lost)} guests)")
    print(
        f"  all {running}/{len(lost)} guests running elsewhere {world.now - t_off:.2f} s "
        f"(simulated) after the power loss; {wall:.1f} s of wall time to simulate it"
    )
    print(
        f"  leader passes that assigned guests: {len(recovering)}, wall time "
        f"{', '.join(f'{1000 * t:.1f} ms' for t in recovering)}; all passes median "
        f"{1000 * statistics.median(t for t, _ in timings):.1f} ms"
    )


def memory(nodes: dict[str, NodeSettings], specs: list[GuestSpec], n_guests: int) -> None:
    gc.collect()
    tracemalloc.start()
    _, _, state = build(len(nodes), n_guests)
    state.guests_of("n01")
    _ = state.by_domain
    size = tracemalloc.get_traced_memory()[0]
    settings = AgentSettings(cluster="scale", node="n01", nodes=nodes, guests=tuple(specs))
    before = tracemalloc.get_traced_memory()[0]
    core = AgentCore(settings, "n01-1", started_at=0.0)
    core.tick(1.0, ConsensusView(state=state), LocalView({}, 1.0))
    core_size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(
        f"memory: one replicated state of {n_guests} guests / {len(nodes)} nodes with its "
        f"indexes: {size / 2**20:.1f} MiB; one agent core's own memory: "
        f"{core_size / 2**10:.0f} KiB (settings are shared with the config)"
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=64)
    p.add_argument("--guests", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--skip-simulation", action="store_true")
    args = p.parse_args()
    nodes, specs, state = build(args.nodes, args.guests)
    decision(nodes, specs, state, args.repeat)
    if not args.skip_simulation:
        simulated(nodes, specs, state)
    memory(nodes, specs, args.guests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
