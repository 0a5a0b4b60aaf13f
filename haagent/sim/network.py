"""The simulator's fake host networks: which interfaces work on which simulated node.

A fake, named as one: real hosts are checked with pyroute2 (haagent.resources.netlink). Every
interface works until a scenario says `link_down N IFACE`; `link_up` restores it. What a node's
agent is shown is what the daemon's network observer would show it: the interfaces the guests
that may run there need, minus those that work, sorted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from haagent.model import GuestSpec


class FakeNetwork:
    def __init__(self, fault: Callable[..., None]) -> None:
        """`fault(name, node, **data)` records the change as a fault in the trace."""
        self._down: dict[str, set[str]] = {}  # node -> interfaces that do not work
        self._fault = fault

    def set_link(self, node: str, interface: str, *, up: bool) -> None:
        down = self._down.setdefault(node, set())
        if up:
            down.discard(interface)
        else:
            down.add(interface)
        self._fault("fault_link_up" if up else "fault_link_down", node, interface=interface)

    def missing(self, node: str, guests: Iterable[GuestSpec]) -> tuple[str, ...]:
        down = self._down.get(node)
        if not down:
            return ()
        return tuple(sorted({n for g in guests if g.allows(node) for n in g.networks} & down))
