"""FakeDrbd: DRBD-8.4-like replicated disks for the simulator (a fake, named as one).

Each drbd guest has one resource with a side on each of its two replica hosts. A side has a
role (Primary/Secondary), an amount of data (`version`: how many writes it holds) and DRBD's
disk flags. The fake follows what real DRBD 8.4.11 did in the test guests
(tests/integration/test_real_drbd.py, tests/fixtures/drbd/, shared/lab/FINDINGS.md §3b):

- Protocol C: while the sides are connected, a write reaches both.
- Single primary: promoting a side while the connected peer is Primary is refused ("(-1)
  Multiple primaries not allowed by config", exit 11); so is promoting a disk that is not
  UpToDate ("(-2) Need access to UpToDate data", exit 17), Outdated included.
- Outdated: `drbdadm outdate` (fault `drbd_outdate`) marks a disconnected Secondary's disk
  Outdated; it survives power loss (it is in the metadata) and clears only by a resync.
- resource-and-stonith fencing: a Primary that loses its peer freezes its I/O
  (`suspended:fencing`) and calls the fence-peer handler (`fence_peer`, the world's fake of
  `haagent drbd fence-peer`: it commits "peer outdated" through the simulated Raft). Exit 3,
  4, 5 or 7 resumes I/O and marks the peer disk Outdated; any other exit leaves I/O frozen
  for good, until `resume-io` or until the peer connects again.
- A Secondary promoted while disconnected, its peer disk not known Outdated, calls the
  handler first; promotion proceeds only on success ("(-7) Refusing to be Primary while peer
  is not outdated" otherwise); exit 6 ("the peer is Primary") outdates this side instead.
- Reconnecting: the side that is behind (or Outdated) resynchronises (Inconsistent for
  `RESYNC_S`, then UpToDate). If both sides wrote while apart, that is a split brain: the
  `initial-split-brain` and `split-brain` helpers run, the connection goes StandAlone and is
  destroyed, and nothing resolves it.
- A host that loses power comes back with its side Secondary, its data and flags unchanged.
- A disconnected Secondary still reports its disk UpToDate (8.4 does: it cannot know).

What each side's DRBD reports goes out as events2 lines (haagent.sim.events2) to the agent's
fake watcher, which folds them with the production parser: the agents see what the parser
makes of 8.4's output (stale peer values included), and a dead or stalled events2.

The truth (who has the newest data) lives here, outside the agents, so the invariants can
check what the agents cannot: that no side is ever promoted with less data than the newest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from haagent.model import GuestSpec, StorageKind
from haagent.ports import ReplicaObservation, ReplicaRole
from haagent.sim.events2 import FakeWatcher, Reported, change_lines, helper_line

RESYNC_S = 1.0
FENCE_OK = (3, 4, 5, 7)  # fence-peer exit codes after which DRBD resumes I/O
PEER_PRIMARY = 6  # "the peer is Primary": DRBD outdates this side

REFUSED_TWO_PRIMARIES = "(-1) Multiple primaries not allowed by config"
REFUSED_NOT_UP_TO_DATE = "(-2) Need access to UpToDate data"
REFUSED_PEER_NOT_OUTDATED = "(-7) Refusing to be Primary while peer is not outdated"

FencePeer = Callable[[str, str, Callable[[int], None]], None]
"""fence_peer(node, guest, on_exit): run the fence-peer handler on `node` for `guest`; call
`on_exit(exit code)` once (never, if the host loses power meanwhile)."""
Record = Callable[[str | None, str, Mapping[str, str | int | bool]], None]


@dataclass
class FakeSide:
    node: str
    role: ReplicaRole = ReplicaRole.SECONDARY
    version: int = 0
    resync_until: float | None = None
    wrote_alone: bool = False  # wrote while disconnected (split-brain detection)
    outdated: bool = False  # DRBD's Outdated flag (metadata: survives power loss)
    suspended: bool = False  # I/O frozen by fencing (resource-and-stonith)
    handler_running: bool = False
    peer_disk_seen: str = "DUnknown"  # what 8.4 reports for the peer disk while disconnected
    up: bool = True  # its host is powered
    boot: int = 0  # power cycles: a handler from before one answers nobody

    def disk(self, now: float) -> str:
        if self.resync_until is not None and now < self.resync_until:
            return "Inconsistent"
        return "Outdated" if self.outdated else "UpToDate"


@dataclass
class FakeResource:
    name: str
    guest: str
    domain: str
    sides: dict[str, FakeSide]
    split_brain: bool = False  # StandAlone after a split brain: only an admin reconnects
    link: bool = True  # DRBD's connection (Connected)
    promotions: list[tuple[str, int, int]] = field(default_factory=list)  # node, its, newest
    reported: dict[str, Reported] = field(default_factory=dict)  # what each side printed last

    def peer(self, node: str) -> FakeSide:
        return next(s for n, s in self.sides.items() if n != node)

    @property
    def newest(self) -> int:
        return max(s.version for s in self.sides.values())


def _no_handler(node: str, guest: str, on_exit: Callable[[int], None]) -> None:
    """Without a world: a handler whose agent never answers (it stays pending)."""


class FakeDrbd:
    """All fake DRBD resources of a simulated cluster, and each agent's events2 watchers."""

    def __init__(
        self,
        guests: Iterable[GuestSpec],
        fence_peer: FencePeer = _no_handler,
        record: Record = lambda at, name, data: None,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.resources: dict[str, FakeResource] = {}
        self._fence_peer = fence_peer
        self._record = record
        self._clock = clock
        self.watchers: dict[tuple[str, str], FakeWatcher] = {}
        for spec in guests:
            if spec.storage is StorageKind.DRBD:
                res = FakeResource(
                    spec.resource,
                    spec.name,
                    spec.domain,
                    {n: FakeSide(n) for n in spec.replica_nodes},
                )
                self.resources[spec.resource] = res
                for n in spec.replica_nodes:
                    res.reported[n] = self._report(res, res.sides[n])
                    self.watchers[(n, res.name)] = FakeWatcher(res.name)

    @property
    def now(self) -> float:
        return self._clock()

    # -- what DRBD reports, and the agents' watchers -----------------------------------------

    def _report(self, res: FakeResource, side: FakeSide, conn: str = "") -> Reported:
        peer = res.peer(side.node)
        out: Reported = {
            "resource": {
                "role": side.role.value.title(),
                "suspended": "fencing" if side.suspended else "no",
            },
            "device": {"disk": side.disk(self.now)},
        }
        if res.split_brain:
            return out  # StandAlone: the connection and peer device were destroyed
        if res.link:
            sync = {True: "SyncTarget", False: "SyncSource"}
            resyncing = side.resync_until is not None or peer.resync_until is not None
            out["connection"] = {"connection": "Connected", "role": peer.role.value.title()}
            out["peer-device"] = {
                "replication": sync[side.resync_until is not None] if resyncing else "Established",
                "peer-disk": peer.disk(self.now),
            }
        else:
            out["connection"] = {"connection": conn or "Connecting", "role": "Unknown"}
            out["peer-device"] = {"replication": "Off", "peer-disk": side.peer_disk_seen}
        return out

    def _emit(self, res: FakeResource, conn: str = "") -> None:
        """Print what changed on each powered side to its events2 (its watcher)."""
        for node, side in res.sides.items():
            if not side.up:
                continue
            new = self._report(res, side, conn)
            lines = change_lines(res.name, res.reported[node], new)
            res.reported[node] = new
            if lines:
                self.watchers[(node, res.name)].deliver(lines)

    def _helper(
        self, res: FakeResource, side: FakeSide, helper: str, code: int | None, conn: str = ""
    ) -> None:
        """A helper call (`code` None) or its exit, after the state lines before it."""
        self._emit(res, conn)
        status = None if code is None else code << 8
        volume = helper != "fence-peer"
        self.watchers[(side.node, res.name)].deliver(
            [helper_line(res.name, helper, status, volume)]
        )
        if code is not None:
            self._record(
                side.node, "drbd_helper", {"resource": res.name, "helper": helper, "exit": code}
            )

    def agent_started(self, node: str) -> None:
        """A new agent process starts its watchers: each prints a fresh dump."""
        for (n, name), watcher in self.watchers.items():
            if n == node:
                res = self.resources[name]
                watcher.start(res.reported[n])

    def node_watchers(self, node: str) -> list[FakeWatcher]:
        """`node`'s agent's watchers (faults make them die, stall and catch up)."""
        return [w for (n, _name), w in self.watchers.items() if n == node]

    def observe(self, node: str) -> tuple[dict[str, ReplicaObservation], frozenset[str]]:
        """What `node`'s agent sees through its watchers: observations of the resources whose
        events2 is current, and the names of those whose state is not known now."""
        out: dict[str, ReplicaObservation] = {}
        unknown: set[str] = set()
        for (n, name), watcher in self.watchers.items():
            if n != node:
                continue
            obs = watcher.observation()
            if obs is None:
                unknown.add(name)
            else:
                out[name] = obs
        return out, frozenset(unknown)

    # -- operations (drbd.sh) ----------------------------------------------------------------

    def promote(self, node: str, resource: str, done: Callable[[str], None]) -> None:
        """`drbdadm primary`: `done('')` on success, else `done(why DRBD refuses)`. While
        disconnected from a peer not known Outdated, the fence-peer handler runs first."""
        res = self.resources[resource]
        side, peer = res.sides[node], res.peer(node)
        if res.link and peer.role is ReplicaRole.PRIMARY:
            done(REFUSED_TWO_PRIMARIES)
            return
        if side.disk(self.now) != "UpToDate":
            done(REFUSED_NOT_UP_TO_DATE)
            return
        if res.link or side.peer_disk_seen in ("Outdated", "Inconsistent"):
            self._make_primary(res, side)
            done("")
            return
        if side.handler_running:
            done(REFUSED_PEER_NOT_OUTDATED)
            return

        def after(code: int) -> None:
            if code in FENCE_OK:
                self.promote(node, resource, done)  # the peer disk is Outdated now
            elif code == PEER_PRIMARY:
                done(REFUSED_NOT_UP_TO_DATE)
            else:
                done(REFUSED_PEER_NOT_OUTDATED)

        self._run_fence_peer(res, side, after)

    def _make_primary(self, res: FakeResource, side: FakeSide) -> None:
        side.role = ReplicaRole.PRIMARY
        res.promotions.append((side.node, side.version, res.newest))
        self._emit(res)

    def demote(self, node: str, resource: str) -> None:
        res = self.resources[resource]
        res.sides[node].role = ReplicaRole.SECONDARY
        self._emit(res)

    def resume_io(self, node: str, resource: str) -> None:
        """`drbdadm resume-io`: lift a freeze (after a failed fence-peer handler)."""
        res = self.resources[resource]
        res.sides[node].suspended = False
        self._emit(res)

    def outdate(self, node: str, resource: str) -> str:
        """`drbdadm outdate`: '' on success, else why DRBD refuses (only a disconnected
        Secondary can be outdated by hand)."""
        res = self.resources[resource]
        side = res.sides[node]
        if side.role is ReplicaRole.PRIMARY:
            return "a Primary cannot be outdated"
        if res.link:
            return "connected: the peer would not agree"
        side.outdated = True
        self._emit(res)
        return ""

    def _run_fence_peer(
        self, res: FakeResource, side: FakeSide, then: Callable[[int], None] | None = None
    ) -> None:
        side.handler_running = True
        boot = side.boot
        self._helper(res, side, "fence-peer", None)

        def on_exit(code: int) -> None:
            if side.boot != boot or not side.handler_running:
                return  # the host lost power meanwhile: nobody waits
            side.handler_running = False
            self._helper(res, side, "fence-peer", code)
            if code in FENCE_OK:
                if not res.link:
                    side.peer_disk_seen = "Inconsistent" if code == 3 else "Outdated"
                    self._emit(res)
                side.suspended = False
            elif code == PEER_PRIMARY and side.role is ReplicaRole.SECONDARY:
                side.outdated = True
            self._emit(res)
            if then is not None:
                then(code)

        self._fence_peer(side.node, res.guest, on_exit)

    def power_off(self, node: str) -> None:
        for res in self.resources.values():
            side = res.sides.get(node)
            if side is not None:
                side.role = ReplicaRole.SECONDARY
                side.suspended = side.handler_running = False
                side.up = False
                side.boot += 1
                self.watchers[(node, res.name)].die()

    def power_on(self, node: str) -> None:
        """DRBD comes up with the host (`drbdadm up` at boot), Secondary, peer unknown."""
        for res in self.resources.values():
            side = res.sides.get(node)
            if side is not None and not side.up:
                side.up = True
                side.peer_disk_seen = "DUnknown"
                res.reported[node] = self._report(res, side)

    def is_primary(self, resource: str, node: str) -> bool:
        side = self.resources[resource].sides.get(node)
        return side is not None and side.role is ReplicaRole.PRIMARY

    def primaries(self, resource: str, powered: Callable[[str], bool]) -> list[str]:
        res = self.resources[resource]
        return [n for n, s in res.sides.items() if s.role is ReplicaRole.PRIMARY and powered(n)]

    # -- time --------------------------------------------------------------------------------

    def step(
        self, running: Callable[[str, str], bool], connected: Callable[[str, str], bool]
    ) -> None:
        """Advance one step: connection changes, resyncs, writes (see the module doc)."""
        now = self.now
        for res in self.resources.values():
            a, b = res.sides.values()
            link = connected(a.node, b.node) and not res.split_brain
            if link and not res.link:
                self._connect(res, a, b)
            elif res.link and not link:
                self._disconnect(res)
            for side in (a, b):
                if side.resync_until is not None and now >= side.resync_until:
                    side.resync_until = None
                    side.outdated = False
            for side in (a, b):
                if side.role is not ReplicaRole.PRIMARY or not running(side.node, res.domain):
                    continue
                peer = b if side is a else a
                if res.link:
                    side.version += 1
                    peer.version = side.version
                elif not side.suspended:
                    side.version += 1
                    side.wrote_alone = True
                # else: frozen, waiting for the fence-peer handler or resume-io (no write)
            self._emit(res)

    def _connect(self, res: FakeResource, a: FakeSide, b: FakeSide) -> None:
        if a.wrote_alone and b.wrote_alone:
            # As 8.4 did in the test guests: Connected, the handshake finds both sides
            # changed, the two helpers run, StandAlone, the connection is destroyed.
            self._emit(res, "Connected")
            for helper in ("initial-split-brain", "split-brain"):
                for side in (a, b):
                    self._helper(res, side, helper, None, "Connected")
                    self._helper(res, side, helper, 0, "Connected")
            self._emit(res, "StandAlone")
            res.split_brain = True
            self._emit(res)
            self._record(None, "drbd_split_brain", {"resource": res.name})
            return
        res.link = True
        a.peer_disk_seen = b.peer_disk_seen = "DUnknown"
        # 8.4 lifts a fencing freeze once the connection is established again (the peer is
        # back as a Secondary that resyncs from this side: nothing diverges).
        a.suspended = b.suspended = False
        if a.version != b.version or a.outdated or b.outdated:
            ahead = max((a, b), key=lambda s: (s.version, not s.outdated))
            behind = b if ahead is a else a
            behind.version = ahead.version
            behind.resync_until = self.now + RESYNC_S
            self._record(None, "drbd_resync", {"resource": res.name})
        a.wrote_alone = b.wrote_alone = False

    def _disconnect(self, res: FakeResource) -> None:
        res.link = False
        freeze = []
        for side in res.sides.values():
            side.peer_disk_seen = "DUnknown"
            if side.up and side.role is ReplicaRole.PRIMARY:
                side.suspended = True
                freeze.append(side)
        self._emit(res, "NetworkFailure")
        for side in freeze:
            self._run_fence_peer(res, side)
