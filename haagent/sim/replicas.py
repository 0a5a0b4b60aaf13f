"""FakeDrbd: DRBD-like replicated disks for the simulator (a fake, named as one).

Each drbd guest has one resource with a side on each of its two replica hosts. A side has a
role (Primary/Secondary) and an amount of data (`version`: how many writes it holds). The
fake keeps DRBD's rules that matter for safety:

- Protocol C: while the sides are connected, a write reaches both.
- Single primary: promoting a side while the connected peer is Primary is refused.
- resource-and-stonith fencing: a Primary that loses its peer freezes its writes until the
  peer is known outdated (the agent commits `ReplicaOutdated`, which is what the fence-peer
  handler waits for). Like real DRBD it reports that freeze (suspended by fencing, the
  handler running) until then; the fake's handler never fails, so the freeze never outlives
  the commit. Once it writes alone, the peer is behind but does not know it: like DRBD 8.4,
  a disconnected Secondary still reports its disk UpToDate.
- Reconnecting: the side that is behind resynchronises (Inconsistent for `resync_s`, then
  UpToDate); if both sides wrote while apart, that is a split brain, reported and never
  resolved.
- A host that loses power comes back with its side Secondary and its data unchanged.

The truth (who has the newest data) lives here, outside the agents, so the invariants can
check what the agents cannot: that no side is ever promoted with less data than the newest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from haagent.model import GuestSpec, StorageKind
from haagent.ports import DiskState, ReplicaObservation, ReplicaRole

RESYNC_S = 1.0


@dataclass
class FakeSide:
    node: str
    role: ReplicaRole = ReplicaRole.SECONDARY
    version: int = 0
    resync_until: float | None = None
    wrote_alone: bool = False  # wrote while disconnected (split-brain detection)


@dataclass
class FakeResource:
    name: str
    guest: str
    domain: str
    sides: dict[str, FakeSide]
    split_brain: bool = False
    was_connected: bool = True
    promotions: list[tuple[str, int, int]] = field(default_factory=list)  # node, its, newest

    def peer(self, node: str) -> FakeSide:
        return next(s for n, s in self.sides.items() if n != node)

    @property
    def newest(self) -> int:
        return max(s.version for s in self.sides.values())


class FakeDrbd:
    """All fake DRBD resources of a simulated cluster."""

    def __init__(self, guests: Iterable[GuestSpec]) -> None:
        self.resources: dict[str, FakeResource] = {}
        for spec in guests:
            if spec.storage is StorageKind.DRBD:
                self.resources[spec.resource] = FakeResource(
                    spec.resource,
                    spec.name,
                    spec.domain,
                    {n: FakeSide(n) for n in spec.replica_nodes},
                )

    def observe(
        self,
        node: str,
        connected: Callable[[str, str], bool],
        now: float,
        outdated: Callable[[str], tuple[str, ...]] = lambda guest: (),
    ) -> dict[str, ReplicaObservation]:
        out: dict[str, ReplicaObservation] = {}
        for res in self.resources.values():
            side = res.sides.get(node)
            if side is None:
                continue
            peer = res.peer(node)
            link = connected(node, peer.node) and not res.split_brain
            frozen = (
                side.role is ReplicaRole.PRIMARY
                and not link
                and not res.split_brain
                and peer.node not in outdated(res.guest)
            )
            out[res.name] = ReplicaObservation(
                resource=res.name,
                role=side.role,
                disk=self._disk(side, now),
                connected=link,
                peer_role=peer.role if link else None,
                peer_disk=self._disk(peer, now) if link else None,
                split_brain=res.split_brain,
                suspended=frozen,
                fence_frozen=frozen,
                fence_pending=frozen,
            )
        return out

    @staticmethod
    def _disk(side: FakeSide, now: float) -> DiskState:
        if side.resync_until is not None and now < side.resync_until:
            return DiskState.INCONSISTENT
        return DiskState.UP_TO_DATE

    def promote(
        self, node: str, resource: str, connected: Callable[[str, str], bool], now: float
    ) -> str:
        """'' on success, else why DRBD refuses."""
        res = self.resources[resource]
        side, peer = res.sides[node], res.peer(node)
        if connected(node, peer.node) and not res.split_brain and peer.role is ReplicaRole.PRIMARY:
            return "peer is Primary (single-primary mode)"
        if self._disk(side, now) is DiskState.INCONSISTENT:
            return "disk Inconsistent"
        side.role = ReplicaRole.PRIMARY
        res.promotions.append((node, side.version, res.newest))
        return ""

    def demote(self, node: str, resource: str) -> None:
        self.resources[resource].sides[node].role = ReplicaRole.SECONDARY

    def power_off(self, node: str) -> None:
        for res in self.resources.values():
            if node in res.sides:
                res.sides[node].role = ReplicaRole.SECONDARY

    def is_primary(self, resource: str, node: str) -> bool:
        side = self.resources[resource].sides.get(node)
        return side is not None and side.role is ReplicaRole.PRIMARY

    def primaries(self, resource: str, powered: Callable[[str], bool]) -> list[str]:
        res = self.resources[resource]
        return [n for n, s in res.sides.items() if s.role is ReplicaRole.PRIMARY and powered(n)]

    def step(
        self,
        now: float,
        running: Callable[[str, str], bool],
        connected: Callable[[str, str], bool],
        outdated: Callable[[str], tuple[str, ...]],
    ) -> list[tuple[str, str]]:
        """Advance one step: writes, freezes, resyncs. Returns trace events (name, resource)."""
        events: list[tuple[str, str]] = []
        for res in self.resources.values():
            a, b = res.sides.values()
            link = connected(a.node, b.node)
            if link and not res.was_connected and not res.split_brain:
                if a.wrote_alone and b.wrote_alone:
                    res.split_brain = True
                    events.append(("drbd_split_brain", res.name))
                elif a.version != b.version:
                    behind = a if a.version < b.version else b
                    ahead = b if behind is a else a
                    behind.version = ahead.version
                    behind.resync_until = now + RESYNC_S
                    events.append(("drbd_resync", res.name))
                a.wrote_alone = b.wrote_alone = False
            res.was_connected = link
            for side in (a, b):
                if side.role is not ReplicaRole.PRIMARY or not running(side.node, res.domain):
                    continue
                peer = b if side is a else a
                if link and not res.split_brain:
                    side.version += 1
                    peer.version = side.version
                elif peer.node in outdated(res.guest):
                    side.version += 1
                    side.wrote_alone = True
                # else: frozen, waiting for the fence-peer decision (no write)
        return events
