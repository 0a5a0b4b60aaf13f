"""FakeRaid1: guest-RAID1 legs for the simulator (a fake, named as one).

Each raid1 guest has two legs, each a disk held by one host, with an amount of data
(`version`: how many writes it holds). A running instance of the guest (on some host) has an
md array over the legs it attached. The fake keeps what matters for safety:

- A write reaches every in-sync member. Leg disks have `error_policy='stop'`: when a member
  cannot be reached (holder powered off, or the link between the two hosts cut), the instance
  pauses at its next write instead of writing on without it, and its guest agent cannot
  answer (observed: unknown). A paused guest cannot acknowledge the unplug of a disk either
  (measured on real QEMU, resources/mirrors.py): a detach fails, and only a restart from the
  fresh leg gets it going again.
- An attach of a leg makes it a resyncing member for `RESYNC_S`, after which it holds the
  array's data and is in sync; a detach removes it.
- A host that loses power loses its instances; its legs keep their data.

The truth (which leg holds the newest data, who writes to which leg) lives here, outside the
agents, so the invariants can check what the agents cannot: no instance ever starts from legs
holding less data than the newest leg, and no leg ever has two writers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from haagent.model import GuestSpec, Leg, StorageKind
from haagent.ports import (
    MEMBER_FAULTY,
    MEMBER_IN_SYNC,
    MEMBER_MISSING,
    MEMBER_RESYNCING,
    MirrorObservation,
)

RESYNC_S = 2.0


@dataclass
class FakeLeg:
    spec: Leg
    version: int = 0


@dataclass
class FakeInstance:
    """One running copy of a guest on `node`, with its array's members (leg id -> state)."""

    node: str
    domain: str
    members: dict[str, str]
    resync_until: dict[str, float] = field(default_factory=dict)
    paused: bool = False  # a write failed on an unreachable leg (error_policy='stop')


@dataclass
class FakeGuest:
    name: str
    domain: str
    legs: dict[str, FakeLeg]
    instances: dict[str, FakeInstance] = field(default_factory=dict)  # by node
    # (node, version the start had, newest version of any leg) per start
    starts: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def newest(self) -> int:
        return max(leg.version for leg in self.legs.values())


class FakeRaid1:
    """All fake raid1 guests of a simulated cluster. `link(a, b)`: can host a reach host b's
    exports (both powered, no cut between them); a host always reaches its own disks."""

    def __init__(self, guests: Iterable[GuestSpec]) -> None:
        self.guests: dict[str, FakeGuest] = {
            spec.name: FakeGuest(
                spec.name, spec.domain, {leg.id: FakeLeg(leg) for leg in spec.legs}
            )
            for spec in guests
            if spec.storage is StorageKind.RAID1
        }

    def reaches(self, node: str, leg: FakeLeg, link: Callable[[str, str], bool]) -> bool:
        return leg.spec.holder == node or link(node, leg.spec.holder)

    def start(
        self, node: str, guest: str, legs: Iterable[str], link: Callable[[str, str], bool]
    ) -> str:
        """'' when the instance started on `legs`, else why QEMU could not open them."""
        g = self.guests[guest]
        chosen = [g.legs[leg_id] for leg_id in legs if leg_id in g.legs]
        if not chosen:
            return "no leg given"
        for leg in chosen:
            if not self.reaches(node, leg, link):
                return f"leg {leg.spec.id} unreachable"
        g.starts.append((node, max(leg.version for leg in chosen), g.newest))
        # md assembles from the members with the most data (the others are not fresh).
        top = max(leg.version for leg in chosen)
        members = {
            leg_id: (MEMBER_IN_SYNC if leg_id in {c.spec.id for c in chosen} else MEMBER_MISSING)
            for leg_id in g.legs
        }
        for leg in chosen:
            if leg.version < top:
                members[leg.spec.id] = MEMBER_FAULTY
        g.instances[node] = FakeInstance(node, g.domain, members)
        return ""

    def observe(
        self, node: str, running: Callable[[str, str], bool]
    ) -> dict[str, MirrorObservation]:
        out: dict[str, MirrorObservation] = {}
        for g in self.guests.values():
            inst = g.instances.get(node)
            if inst is None or inst.paused or not running(node, g.domain):
                continue
            progress = None
            if inst.resync_until:
                progress = 0.5  # the fake does not model a rate: mid-way while it lasts
            out[g.name] = MirrorObservation(g.name, dict(inst.members), progress)
        return out

    def attach(
        self, node: str, guest: str, leg_id: str, link: Callable[[str, str], bool], now: float
    ) -> str:
        g = self.guests[guest]
        inst, leg = g.instances.get(node), g.legs.get(leg_id)
        if inst is None or leg is None:
            return "not running here"
        if inst.members.get(leg_id) != MEMBER_MISSING:
            return f"leg {leg_id} is already attached"
        if not self.reaches(node, leg, link):
            return f"leg {leg_id} unreachable"
        inst.members[leg_id] = MEMBER_RESYNCING
        inst.resync_until[leg_id] = now + RESYNC_S
        return ""

    def detach(self, node: str, guest: str, leg_id: str) -> str:
        inst = self.guests[guest].instances.get(node)
        if inst is None:
            return "not running here"
        if inst.paused:
            return "the guest is paused: it cannot acknowledge the unplug"
        inst.members[leg_id] = MEMBER_MISSING
        inst.resync_until.pop(leg_id, None)
        return ""

    def step(
        self, now: float, running: Callable[[str, str], bool], link: Callable[[str, str], bool]
    ) -> list[str]:
        """Advance one step: writes, failed members, finished resyncs. Returns violations of
        "never two writers on one leg"."""
        problems: list[str] = []
        for g in self.guests.values():
            for node in [n for n, i in g.instances.items() if not running(n, i.domain)]:
                del g.instances[node]
            writers: dict[str, list[str]] = {}
            for inst in g.instances.values():
                self._write(g, inst, now, link, writers)
            for leg_id, nodes in sorted(writers.items()):
                if len(nodes) > 1:
                    problems.append(f"two writers on leg {leg_id} of {g.name}: {', '.join(nodes)}")
        return problems

    def _write(
        self,
        g: FakeGuest,
        inst: FakeInstance,
        now: float,
        link: Callable[[str, str], bool],
        writers: dict[str, list[str]],
    ) -> None:
        attached = [
            g.legs[i] for i, m in inst.members.items() if m in (MEMBER_IN_SYNC, MEMBER_RESYNCING)
        ]
        if inst.paused or any(not self.reaches(inst.node, leg, link) for leg in attached):
            inst.paused = True  # error_policy='stop': no write reaches any leg
            return
        live = [g.legs[i] for i, m in inst.members.items() if m == MEMBER_IN_SYNC]
        if not live:
            return  # no member in sync: md has nothing to write to
        for leg_id, until in list(inst.resync_until.items()):
            target = g.legs[leg_id]
            if now >= until:
                # Complete: it holds the array's data (its version only now, so a copy cut
                # short never looks current).
                del inst.resync_until[leg_id]
                inst.members[leg_id] = MEMBER_IN_SYNC
                target.version = max(leg.version for leg in live)
                live.append(target)
            else:
                writers.setdefault(leg_id, []).append(inst.node)
        version = max(leg.version for leg in live) + 1
        for leg in live:
            leg.version = version
            writers.setdefault(leg.spec.id, []).append(inst.node)
