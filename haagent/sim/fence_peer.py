"""The fake `haagent drbd fence-peer` handler for the simulator's FakeDrbd (a fake).

It does what the real handler and the agent's side of its socket do together
(haagent.resources.drbd_fence.run_handler with haagent.resources.drbd_authority), against the
simulated Raft instead of pysyncobj:

- ask the node's agent; the agent proposes `ReplicaOutdated(guest, peer, by=node,
  generation it knows)` with its commit timeout;
- accepted -> exit 7 if the peer's node is committed as fenced, else 4;
- refused -> exit 6 if the peer owns the guest, else 1;
- no answer (no agent, no majority, timeout) -> ask again after `RETRY_S`, until
  `TIMEOUT_S` (the shipped config's `--timeout-s 60`) has passed: then exit 1, and DRBD leaves
  I/O frozen;
- a node whose handler is broken (fault `drbd_handler N broken`, as a missing `/sbin/drbdadm`
  in the test guests) exits 1 at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from haagent.commands import ReplicaOutdated
from haagent.model import NodeState
from haagent.ports import Outcome, OutcomeKind

if TYPE_CHECKING:
    from haagent.sim.world import World

RETRY_S = 1.0
TIMEOUT_S = 60.0
EXIT_FAILED = 1


def run_fence_peer(
    world: World, node_name: str, guest: str, on_exit: Callable[[int], None]
) -> None:
    """Start one handler run on `node_name` for `guest`; `on_exit(code)` is called once."""
    node = world.nodes[node_name]
    life = node.boot_count
    deadline = world.now + TIMEOUT_S
    finished = False

    def finish(code: int) -> None:
        nonlocal finished
        if finished or node.boot_count != life:
            return
        finished = True
        on_exit(code)

    if node_name in world.broken_handlers:
        finish(EXIT_FAILED)
        return

    def again() -> None:
        if world.now + RETRY_S >= deadline:
            finish(EXIT_FAILED)
        else:
            world.at(world.now + RETRY_S, attempt)

    def answered(outcome: Outcome) -> None:
        state = node.state
        record = state.guests.get(guest)
        peer = record.spec.peer_of(node_name) if record is not None else None
        if outcome.kind is OutcomeKind.UNKNOWN or peer is None:
            again()
        elif outcome.kind is OutcomeKind.ACCEPTED:
            finish(7 if state.node(peer).state is NodeState.FENCED else 4)
        else:
            finish(6 if record is not None and record.owner == peer else EXIT_FAILED)

    def attempt() -> None:
        if finished or node.boot_count != life:
            return
        agent = node.agent
        record = node.state.guests.get(guest)
        peer = record.spec.peer_of(node_name) if record is not None else None
        if agent is None or node.hung or record is None or peer is None:
            again()  # the agent's socket does not answer (or it knows no such guest yet)
            return
        wall = round(node.local(world.now) + node.wall_offset, 3)  # the agent's wall clock
        command = ReplicaOutdated(guest, peer, node_name, record.generation, wall)
        timeout_s = world.agent_settings(node_name).commit_timeout_s
        world.propose_as(node_name, command, timeout_s, answered)

    attempt()
