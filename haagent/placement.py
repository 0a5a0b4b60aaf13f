"""Where orphaned guests go: allowed/preferred nodes, memory, priority, boot-storm limit.

Pure functions over the committed state. The leader calls `plan` on every pass; the result is
proposed as one `AssignGuests` command, and `apply` re-checks each item, so a plan made on a
slightly stale state is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from haagent.model import ClusterState, DesiredState, GuestRecord, GuestState, NodeRole, NodeState
from haagent.statemachine import movable


@dataclass(frozen=True)
class Placement:
    guest: str
    node: str
    expected_generation: int


@dataclass(frozen=True)
class Unplaced:
    guest: str
    why: str


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]
    unplaced: tuple[Unplaced, ...]


def needs_owner(state: ClusterState, guest: GuestRecord) -> bool:
    """A wanted guest whose owner cannot run it and that is safe to move."""
    if guest.desired is not DesiredState.RUNNING or guest.state is GuestState.ERROR:
        return False
    if not movable(state, guest):
        return False
    return guest.owner is None or state.node(guest.owner).state is not NodeState.UP


def committed_mib(state: ClusterState, node: str) -> int:
    """Memory the node's owned guests need: every guest it owns that is wanted or not stopped."""
    return sum(
        g.spec.memory_mib
        for g in state.guests_of(node)
        if g.desired is DesiredState.RUNNING or g.state is not GuestState.STOPPED
    )


def pending_starts(state: ClusterState, node: str) -> int:
    """Guests assigned to the node and wanted, but not yet confirmed running."""
    return sum(
        1
        for g in state.guests_of(node)
        if g.desired is DesiredState.RUNNING
        and g.state in (GuestState.STOPPED, GuestState.STARTING)
    )


def plan(
    state: ClusterState,
    capacity_mib: Mapping[str, int],
    max_concurrent_starts: int,
    exclude: frozenset[str] = frozenset(),
) -> Plan:
    """Choose owners for the guests that need one.

    Order: priority (high first), then name, so the result is deterministic. A node takes a
    guest if it is an up hypervisor, allowed by the guest, has the memory left, and has fewer
    than `max_concurrent_starts` starts pending (so one failover is not a boot storm; the rest
    are placed on later passes as starts complete). Among fitting nodes the guest's preferred
    nodes win in their listed order, then the node with the most free memory, then the name.
    Nodes in `exclude` are never chosen (e.g. nodes being drained).
    """
    free: dict[str, int] = {}
    starts: dict[str, int] = {}
    for name, rec in state.nodes.items():
        if rec.state is NodeState.UP and rec.role is NodeRole.HYPERVISOR and name not in exclude:
            free[name] = capacity_mib.get(name, 0) - committed_mib(state, name)
            starts[name] = pending_starts(state, name)
    orphans = sorted(
        (g for g in state.guests.values() if needs_owner(state, g)),
        key=lambda g: (-g.spec.priority, g.name),
    )
    placements: list[Placement] = []
    unplaced: list[Unplaced] = []
    for guest in orphans:
        allowed = [n for n in free if guest.spec.allows(n)]
        if not allowed:
            unplaced.append(Unplaced(guest.name, "no allowed node is up"))
            continue
        fitting = [n for n in allowed if free[n] >= guest.spec.memory_mib]
        if not fitting:
            best = max(free[n] for n in allowed)
            unplaced.append(
                Unplaced(
                    guest.name,
                    f"needs {guest.spec.memory_mib} MiB, "
                    f"most free on an allowed node is {best} MiB",
                )
            )
            continue
        ready = [n for n in fitting if starts[n] < max_concurrent_starts]
        if not ready:
            unplaced.append(Unplaced(guest.name, "waiting: start limit reached on fitting nodes"))
            continue
        node = min(ready, key=lambda n: (_preference(guest, n), -free[n], n))
        free[node] -= guest.spec.memory_mib
        starts[node] += 1
        placements.append(Placement(guest.name, node, guest.generation))
    return Plan(tuple(placements), tuple(unplaced))


def _preference(guest: GuestRecord, node: str) -> int:
    prefs = guest.spec.preferred_nodes
    return prefs.index(node) if node in prefs else len(prefs)
