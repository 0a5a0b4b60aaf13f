"""Where orphaned guests go: allowed/preferred nodes, memory, priority, anti-affinity, and a
per-node start limit.

Pure functions over the committed state. The leader calls `plan` on every pass; the result is
proposed as one `AssignGuests` command, and `apply` re-checks each item, so a plan made on a
slightly stale state is harmless. The cost is one pass over the guests plus, per guest to
place, one pass over the nodes: a 64-node, 10 000-guest cluster plans a whole failed node's
guests in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from haagent.core.raid1 import placement_rank, why_no_fresh_leg
from haagent.model import (
    ClusterState,
    DesiredState,
    GuestRecord,
    GuestState,
    NodeRole,
    NodeState,
    StorageKind,
)
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
    hopeless: bool = False  # every allowed node already gave up on it
    waiting: bool = False  # only the start limit holds it back: placed on a later pass


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]
    unplaced: tuple[Unplaced, ...]


def needs_owner(state: ClusterState, guest: GuestRecord) -> bool:
    """A wanted guest whose owner cannot or will not run it, and that is safe to move."""
    if guest.desired is not DesiredState.RUNNING or guest.state is GuestState.ERROR:
        return False
    if not movable(state, guest):
        return False
    if guest.owner is None:
        return True
    owner = state.node(guest.owner)
    return (
        owner.state is not NodeState.UP
        or owner.maintenance
        or (guest.move_to is not None and guest.move_to != guest.owner)
        or guest.owner in guest.failed_nodes
        or bool(owner.lacks(guest.spec))
    )


def occupies(guest: GuestRecord) -> bool:
    """Does the guest hold its owner's memory (and anti-affinity slot)?"""
    return guest.desired is DesiredState.RUNNING or guest.state is not GuestState.STOPPED


def is_pending_start(guest: GuestRecord) -> bool:
    return guest.desired is DesiredState.RUNNING and guest.state in (
        GuestState.STOPPED,
        GuestState.STARTING,
    )


@dataclass
class _Load:
    free_mib: int
    starts: int = 0
    groups: set[str] = field(default_factory=set)


def committed_mib(state: ClusterState, node: str) -> int:
    """Memory the node's owned guests need: every guest it owns that is wanted or not stopped."""
    return sum(g.spec.memory_mib for g in state.guests_of(node) if occupies(g))


def _replica_hosts_away(guest: GuestRecord, load: Mapping[str, object]) -> list[str]:
    """The replica hosts of a DRBD guest that have not given up on it but cannot take it now
    (down, failed, fenced, in maintenance); none for other storage."""
    if guest.spec.storage is not StorageKind.DRBD:
        return []
    return [n for n in guest.spec.replica_nodes if n not in load and n not in guest.failed_nodes]


def plan(
    state: ClusterState,
    capacity_mib: Mapping[str, int],
    max_concurrent_starts: int,
    exclude: frozenset[str] = frozenset(),
) -> Plan:
    """Choose owners for the guests that need one.

    Order: priority (high first), then name, so the result is deterministic. A node takes a
    guest if it is an up hypervisor out of maintenance and not in `exclude`, is allowed by the
    guest, has not given up on it before, has the memory left, hosts no guest of the same
    anti-affinity group, and has fewer than `max_concurrent_starts` starts pending (so one
    failover is not a boot storm: the rest are placed on later passes as starts complete).
    Among fitting nodes the guest's preferred nodes win in their listed order, then the node
    with the most free memory, then the name.
    """
    load: dict[str, _Load] = {
        name: _Load(capacity_mib.get(name, 0))
        for name, rec in state.nodes.items()
        if rec.state is NodeState.UP
        and rec.role is NodeRole.HYPERVISOR
        and not rec.maintenance
        and name not in exclude
    }
    orphans: list[GuestRecord] = []
    for g in state.guests.values():
        if needs_owner(state, g):
            # It leaves its owner (which gave up on it): it holds none of that node's memory,
            # anti-affinity slot or start slots, or two nodes that each gave up on one guest
            # would block each other's only start slot for good (found by swarm seed 5914).
            orphans.append(g)
        elif g.owner in load and occupies(g):
            slot = load[g.owner]
            slot.free_mib -= g.spec.memory_mib
            if is_pending_start(g):
                slot.starts += 1
            if g.spec.anti_affinity:
                slot.groups.add(g.spec.anti_affinity)
    orphans.sort(key=lambda g: (-g.spec.priority, g.name))

    limit = max_concurrent_starts
    placements: list[Placement] = []
    unplaced: list[Unplaced] = []
    for guest in orphans:
        allowed = [n for n in load if guest.spec.allows(n)]
        target = state.nodes.get(guest.move_to) if guest.move_to is not None else None
        choice: str | Unplaced
        if target is not None and target.state is NodeState.UP:
            # An admin's move (`haagent guest move`) goes to its target only, and waits there
            # for what passes by itself (a start slot, a replica host coming back).
            if guest.move_to in exclude:
                # Not heard from for a while (or leaving): it comes back, or it is declared
                # failed and no longer up, which drops the move (below).
                why = f"move target {guest.move_to} not heard from: waiting"
                choice = Unplaced(guest.name, why, waiting=True)
            else:
                only = [n for n in allowed if n == guest.move_to]
                choice = _choose(state, guest, only, load, limit)
            if isinstance(choice, Unplaced) and not choice.waiting:
                # The target cannot take it for a reason that lasts (an anti-affinity partner
                # or other guests' memory there, maintenance, a missing network, it gave up on
                # the guest): the move is dropped and the guest placed like any other, rather
                # than stay down for good after its stop (swarm seed 593). The API refuses such
                # a move, but only on its own, possibly stale, view of the committed state.
                why = f"move target {guest.move_to} unavailable ({choice.why})"
                choice = _choose(state, guest, allowed, load, limit)
                if isinstance(choice, Unplaced):
                    choice = replace(choice, why=f"{why}; {choice.why}")
        else:
            # A target no longer up (failed, fenced, gone) cannot take the guest, which must
            # not stay down waiting for it (swarm seed 217): it is placed like any other.
            choice = _choose(state, guest, allowed, load, limit)
        if isinstance(choice, Unplaced):
            unplaced.append(choice)
        else:
            placements.append(Placement(guest.name, choice, guest.generation))
    return Plan(tuple(placements), tuple(unplaced))


def _choose(
    state: ClusterState,
    guest: GuestRecord,
    allowed: list[str],
    load: dict[str, _Load],
    max_concurrent_starts: int,
) -> str | Unplaced:
    """The node among `allowed` that takes `guest` (its slot in `load` is charged), or why
    none can."""
    spec = guest.spec
    if not allowed:
        return Unplaced(guest.name, "no allowed node is up")
    untried = [n for n in allowed if n not in guest.failed_nodes]
    away = _replica_hosts_away(guest, load)
    if not untried and away:
        # A DRBD guest whose up replica host gave up on it (its disk Outdated or
        # Inconsistent, say) waits for the other replica's host rather than going to the
        # error state: it is the only place the guest may run, and it may hold current data.
        failed = ", ".join(guest.failed_nodes)
        why = f"failed on {failed}; waiting for replica host {', '.join(away)}"
        return Unplaced(guest.name, why, waiting=True)
    if not untried:
        return Unplaced(
            guest.name,
            f"failed on {', '.join(guest.failed_nodes)}; no other node allowed",
            hopeless=True,
        )
    # Data before compute: a replica known to be behind is never promoted.
    untried = [n for n in untried if n not in guest.outdated_nodes]
    if not untried:
        outdated = ", ".join(guest.outdated_nodes)
        return Unplaced(guest.name, f"only outdated replicas are up ({outdated})")
    if spec.storage is StorageKind.RAID1:
        # Data before compute: never a start from stale legs alone; a node from which no
        # fresh leg is reachable could only wait.
        why = why_no_fresh_leg(state, guest, untried[0])
        untried = [n for n in untried if not why_no_fresh_leg(state, guest, n)]
        if not untried:
            return Unplaced(guest.name, why)
    if spec.networks:
        lacking = {n: state.node(n).lacks(spec) for n in untried}
        untried = [n for n in untried if not lacking[n]]
        if not untried:
            return Unplaced(guest.name, _lacking(lacking))
    fitting = [n for n in untried if load[n].free_mib >= spec.memory_mib]
    if not fitting:
        best = max(load[n].free_mib for n in untried)
        return Unplaced(
            guest.name,
            f"needs {spec.memory_mib} MiB, most free on an allowed node is {best} MiB",
        )
    if spec.anti_affinity:
        fitting = [n for n in fitting if spec.anti_affinity not in load[n].groups]
        if not fitting:
            return Unplaced(
                guest.name,
                f"anti-affinity: every node with room hosts a guest of group "
                f"{spec.anti_affinity!r}",
            )
    ready = [n for n in fitting if load[n].starts < max_concurrent_starts]
    if not ready:
        return Unplaced(guest.name, "waiting: start limit reached on fitting nodes", waiting=True)
    node = min(ready, key=lambda n: (*_preference(state, guest, n), -load[n].free_mib, n))
    slot = load[node]
    slot.free_mib -= spec.memory_mib
    slot.starts += 1
    if spec.anti_affinity:
        slot.groups.add(spec.anti_affinity)
    return node


def _lacking(lacking: Mapping[str, tuple[str, ...]]) -> str:
    """ "hv3 lacks br-backend; hv4 lacks br-backend, eth1" (at most 8 nodes named, by name)."""
    parts = [f"{n} lacks {', '.join(nets)}" for n, nets in sorted(lacking.items())]
    more = f"; and {len(parts) - 8} more" if len(parts) > 8 else ""
    return "; ".join(parts[:8]) + more


def _preference(state: ClusterState, guest: GuestRecord, node: str) -> tuple[int, int]:
    """(rank in preferred_nodes, storage rank): the admin's order first; then a raid1 guest
    prefers the holder of a fresh leg, then the holder of a stale one, then any other node."""
    prefs = guest.spec.preferred_nodes
    rank = placement_rank(state, guest, node) if guest.spec.storage is StorageKind.RAID1 else 0
    return prefs.index(node) if node in prefs else len(prefs), rank
