"""The admin verbs of issue 12 part 5 in the simulator: what an admin's CLI sends, decided on
the committed state of the moment (as the CLI reads it from an agent), through the world's
admin queue (re-sent every second until it commits, like an admin who reads "unknown").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from haagent.commands import CleanupGuest, MoveGuest, SetArming, SetFrozen

if TYPE_CHECKING:
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
