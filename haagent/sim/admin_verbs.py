"""The admin verbs of issue 12 part 5 in the simulator: what an admin's CLI sends, through the
world's admin queue (re-sent every second until it commits, like an admin who reads
"unknown"). The version a verb carries is read again from the committed state when the
command is first sent (`decided_on`), as the CLI reads it from an agent; the one read when the
step is scheduled is only what the trace's `fault_admin` line shows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from haagent.commands import (
    CleanupGuest,
    Command,
    MoveGuest,
    SetArming,
    SetDesired,
    SetFrozen,
    SetMaintenance,
)

if TYPE_CHECKING:
    from haagent.model import ClusterState
    from haagent.sim.world import World

BY = "admin"


def _guest_version(world: World, guest: str) -> int:
    """The guest's admin version now (0 before the leader registered it: then the command is
    refused or applies to the new record, as the CLI's would)."""
    record = world.committed_state.guests.get(guest)
    return record.admin_version if record is not None else 0


def cleanup(world: World, guest: str) -> None:
    version = _guest_version(world, guest)
    world.admin(CleanupGuest(guest, BY, "", 0.0, version), guest=guest)


def move(world: World, guest: str, node: str) -> None:
    version = _guest_version(world, guest)
    world.admin(MoveGuest(guest, node, BY, "", 0.0, version), guest=guest, node=node)


def set_arming(world: World, disarm: bool, for_s: float = 0.0) -> None:
    version = world.committed_state.arming.version
    command = SetArming(disarm, for_s, BY, "", 0.0, version)
    world.admin(command, disarm=disarm, for_s=for_s, version=version)


def set_frozen(world: World, node: str, on: bool) -> None:
    version = world.committed_state.node(node).admin_version
    world.admin(SetFrozen(node, on, BY, "", 0.0, version), node=node, on=on)


def decided_on(state: ClusterState, command: Command) -> Command:
    """`command` carrying the admin version of the committed record it is decided on, so that
    a late re-delivery cannot undo a newer decision (issue 8 item 7).

    The world calls this at the command's first delivery, not when the verb was scheduled:
    the admin's commands commit in the order given, so a real admin sends the next one (and
    its CLI reads the version from an agent) only once the previous one committed. Deciding
    at scheduling time instead let a heal-time `thaw` queued behind a `freeze` that waited
    for a leader carry the version from before that freeze, be refused as stale, and leave
    the node frozen for good (swarm seeds 341, 449, 587). Commands for records that do not
    exist yet keep the version they carry (refused or applied as the CLI's would be).
    """
    if isinstance(command, SetDesired | CleanupGuest | MoveGuest):
        guest = state.guests.get(command.guest)
        if guest is not None:
            return replace(command, expect_version=guest.admin_version)
    elif isinstance(command, SetMaintenance | SetFrozen):
        node = state.nodes.get(command.node)
        if node is not None:
            return replace(command, expect_version=node.admin_version)
    elif isinstance(command, SetArming):
        return replace(command, expect_version=state.arming.version)
    return command
