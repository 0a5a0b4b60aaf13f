"""Checks `apply` makes for several commands (haagent.statemachine and the modules it
dispatches to), each returning why a command is refused ("" when it is not), so every
command refuses with the same words for the same reason.

Pure and deterministic like `haagent.statemachine`.
"""

from __future__ import annotations

from haagent.model import ClusterState, GuestSpec, NodeRole, NodeState


def owner_check(state: ClusterState, guest_name: str, node: str, generation: int) -> str:
    """Why `node` may not report on `guest_name` at `generation` ("" if it may): the guest
    must exist, be owned by `node` at exactly `generation`, and `node` must be up."""
    guest = state.guests.get(guest_name)
    if guest is None:
        return f"unknown guest {guest_name!r}"
    if guest.owner != node or guest.generation != generation:
        return f"{guest_name} is owned by {guest.owner} at generation {guest.generation}"
    if state.node(node).state is not NodeState.UP:
        return f"{node} is {state.node(node).state}"
    return ""


def target_refusal(state: ClusterState, spec: GuestSpec, node: str) -> str:
    """Why `node` may not be given a guest of `spec` ("" if it may): it must be an up
    hypervisor, not in maintenance, allowed by the spec and have what the spec needs."""
    target = state.node(node)
    if target.state is not NodeState.UP or target.role is not NodeRole.HYPERVISOR:
        return f"{node} is not an up hypervisor"
    if target.maintenance:
        return f"{node} is in maintenance"
    if not spec.allows(node):
        return f"{node} is not allowed"
    if target.lacks(spec):
        return f"{node} lacks {', '.join(target.lacks(spec))}"
    return ""
