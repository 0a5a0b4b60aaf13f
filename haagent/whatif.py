"""What-if for admins: "what happens to my cluster if node3 dies now?"

Pure functions over a cluster state and the node capacities, using the very placement code
the leader runs (`haagent.placement.plan`), so the answer is what the cluster would do, not an
approximation of it. Start limits are ignored (they only spread the starts over a few passes).

`tolerated_failures` answers how many hypervisor failures the cluster survives right now with
every wanted guest still running: the smaller of what Raft's majority allows and what memory
and placement rules allow in the worst case. Small clusters are checked exhaustively (every
combination of failed nodes); beyond `EXHAUSTIVE_LIMIT` combinations the worst case is
estimated by failing the most loaded nodes first, and the answer says so.

Networks count as they do for the leader: a node whose committed condition lacks one of a
guest's networks is skipped by `plan`, and the answer names it ("n2 lacks br-backend"). The
offline answer (`planned_state`, from the config) knows no node's condition: every node
counts as having every network.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from haagent.commands import DefineGuest, Join
from haagent.model import (
    ClusterState,
    GuestSpec,
    GuestState,
    NodeRecord,
    NodeRole,
    NodeState,
)
from haagent.placement import occupies, plan
from haagent.statemachine import apply

EXHAUSTIVE_LIMIT = 5000
NO_START_LIMIT = 1_000_000


@dataclass(frozen=True)
class WhatIf:
    failed: tuple[str, ...]
    moves: dict[str, tuple[str, str]]  # guest -> (from, to)
    unplaced: dict[str, str]  # guest -> why it would not run
    quorum_kept: bool
    tolerated: int
    tolerated_detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "fail": list(self.failed),
            "quorum_kept": self.quorum_kept,
            "moves": {g: {"from": a, "to": b} for g, (a, b) in sorted(self.moves.items())},
            "unplaced": dict(sorted(self.unplaced.items())),
            "tolerated_node_failures": self.tolerated,
            "tolerated_detail": self.tolerated_detail,
        }


def _fail_nodes(state: ClusterState, nodes: Iterable[str]) -> ClusterState:
    """The state as it would be once `nodes` are declared failed and fenced."""
    changed = dict(state.nodes)
    for name in nodes:
        rec = changed.get(name) or NodeRecord(name=name)
        changed[name] = replace(rec, state=NodeState.FENCED)
    return replace(state, nodes=changed)


def _recover(
    state: ClusterState, capacity_mib: Mapping[str, int]
) -> tuple[ClusterState, dict[str, tuple[str, str]], dict[str, str]]:
    """Place every orphan as the leader would (no start limit); return the new state."""
    result = plan(state, capacity_mib, NO_START_LIMIT)
    moves: dict[str, tuple[str, str]] = {}
    for p in result.placements:
        guest = state.guests[p.guest]
        moves[p.guest] = (guest.owner or "-", p.node)
        record = replace(
            guest,
            owner=p.node,
            generation=guest.generation + 1,
            state=GuestState.RUNNING,
            failures=0,
        )
        state = state.with_guest(record)
    return state, moves, {u.guest: u.why for u in result.unplaced}


def _voters(state: ClusterState, extra: Iterable[str] = ()) -> list[str]:
    return sorted(set(state.nodes) | set(extra))


def what_if(
    state: ClusterState,
    capacity_mib: Mapping[str, int],
    fail: Iterable[str],
    voters: Iterable[str] = (),
    tolerated: tuple[int, str] | None = None,
) -> WhatIf:
    """Where each guest of the failed nodes would go, and what would not fit and why.

    `tolerated`: a tolerated-failures answer computed earlier (the daemon keeps one, refreshed
    off its loop); None computes it here."""
    failed = tuple(sorted(set(fail)))
    all_voters = _voters(state, voters)
    alive_voters = [
        n
        for n in all_voters
        if n not in failed and state.node(n).state in (NodeState.UP, NodeState.DOWN)
    ]
    quorum_kept = len(alive_voters) * 2 > len(all_voters)
    _, moves, unplaced = _recover(_fail_nodes(state, failed), capacity_mib)
    count, detail = tolerated or tolerated_failures(state, capacity_mib, all_voters)
    if not quorum_kept:
        unplaced = {
            **{g: "no Raft majority left: nothing can be recovered" for g in moves},
            **unplaced,
        }
        moves = {}
    return WhatIf(failed, moves, unplaced, quorum_kept, count, detail)


def _all_run(state: ClusterState, capacity_mib: Mapping[str, int], failed: tuple[str, ...]) -> bool:
    _, _, unplaced = _recover(_fail_nodes(state, failed), capacity_mib)
    return not unplaced


def tolerated_failures(
    state: ClusterState,
    capacity_mib: Mapping[str, int],
    voters: Iterable[str] = (),
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, str]:
    """How many hypervisors may fail now with every wanted guest still running somewhere.

    `should_stop` is asked between two placements (each costs O(guests)); once it says True
    the answer is the count proven so far, a lower bound, and the detail says so. The caller
    owns the clock: this stays a pure function."""
    stop = should_stop or (lambda: False)
    all_voters = _voters(state, voters)
    quorum_limit = (len(all_voters) - 1) // 2
    hypervisors = sorted(
        n
        for n, r in state.nodes.items()
        if r.role is NodeRole.HYPERVISOR and r.state is NodeState.UP and not r.maintenance
    )
    if not _all_run(state, capacity_mib, ()):
        return 0, "some wanted guests cannot run even now"
    tolerated = 0
    estimated = False
    for f in range(1, min(quorum_limit, len(hypervisors)) + 1):
        if math.comb(len(hypervisors), f) <= EXHAUSTIVE_LIMIT:
            worst = None
            for combo in itertools.combinations(hypervisors, f):
                if stop():
                    return tolerated, (
                        f"at least {tolerated}: the time budget ran out while checking "
                        f"{f} failure(s)"
                    )
                if not _all_run(state, capacity_mib, combo):
                    worst = combo
                    break
        else:
            if stop():
                return tolerated, (
                    f"at least {tolerated}: the time budget ran out before checking {f} failure(s)"
                )
            estimated = True
            loaded = sorted(hypervisors, key=lambda n: (-_load(state, n), n))
            combo = tuple(loaded[:f])
            worst = None if _all_run(state, capacity_mib, combo) else combo
        if worst is not None:
            return tolerated, (
                f"{f} failures ({', '.join(worst)}) would leave guests without "
                f"a node" + (" (worst case estimated)" if estimated else "")
            )
        tolerated = f
    limit = "the Raft majority" if tolerated == quorum_limit else "the number of hypervisors"
    return tolerated, f"limited by {limit} ({len(all_voters)} voters)" + (
        " (worst case estimated)" if estimated else ""
    )


def _load(state: ClusterState, node: str) -> int:
    return sum(g.spec.memory_mib for g in state.guests_of(node) if occupies(g))


def planned_state(
    nodes: Mapping[str, NodeRole], guests: Iterable[GuestSpec], capacity_mib: Mapping[str, int]
) -> ClusterState:
    """The state a freshly started cluster would reach: every node up, every guest placed
    by the leader's rules. Used when no agent can be asked for the live state."""
    state = ClusterState()
    for name, role in sorted(nodes.items()):
        state, _ = apply(state, Join(name, "what-if", role, True, 0.0))
    for spec in guests:
        state, _ = apply(state, DefineGuest(spec, 0.0))
    state, _, _ = _recover(state, capacity_mib)
    return state
