"""DRBD `events2` output -> typed records -> the core's replica observations. Pure: no I/O.

`drbdsetup events2` (DRBD 8.4 through drbd-utils' `drbdsetup-84`, and DRBD 9) prints one line
per object and state change, optionally prefixed by an ISO timestamp (`--timestamps`):

    [TIMESTAMP] ACTION OBJECT key:value ...       ACTION: exists create change destroy
                                                          call response rename
                                                  OBJECT: resource device connection
                                                          peer-device path helper
    [TIMESTAMP] exists -                          the initial dump is complete

A `change` line carries only the keys that changed (plus the keys naming the object), so the
state of a resource is the merge of every line about it since its `exists`/`create`.
`ResourceTracker` keeps that merge and maps it onto `ReplicaObservation` (haagent/ports.py),
the only thing the core sees. How each DRBD state maps, and why, is in `_disk_state` and
`ResourceState.observation`.

Tested against real streams captured from DRBD 8.4.11 in TCG guests and against drbd-utils'
own DRBD 9 expected outputs (tests/fixtures/drbd/README.md says which file came from where).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from haagent.ports import DiskState, ReplicaObservation, ReplicaRole


class Events2Error(ValueError):
    """A line that is not events2 output (the watcher logs and skips it)."""


class Action(StrEnum):
    EXISTS = "exists"
    CREATE = "create"
    CHANGE = "change"
    DESTROY = "destroy"
    CALL = "call"
    RESPONSE = "response"
    RENAME = "rename"


class Kind(StrEnum):
    RESOURCE = "resource"
    DEVICE = "device"
    CONNECTION = "connection"
    PEER_DEVICE = "peer-device"
    PATH = "path"
    HELPER = "helper"
    END_OF_DUMP = "-"  # "exists -": the initial dump is complete


@dataclass(frozen=True)
class Event:
    """One events2 line: what happened to which object, with its key:value fields.

    Values stay DRBD's own words (`UpToDate`, `Primary`, `fencing`): interpreting them is the
    job of `ResourceState`, so a DRBD version with a new state word still parses."""

    action: Action
    kind: Kind
    fields: Mapping[str, str]
    timestamp: str | None = None

    @property
    def resource(self) -> str:
        return self.fields.get("name", "")


def parse_line(line: str) -> Event | None:
    """Parse one line; None for a blank line. Raises Events2Error for anything else."""
    words = line.split()
    if not words:
        return None
    timestamp = None
    if words[0][:1].isdigit():  # --timestamps: 2026-12-04T15:40:00.123456+00:00
        timestamp, words = words[0], words[1:]
    if len(words) < 2:
        raise Events2Error(f"not an events2 line: {line!r}")
    try:
        action = Action(words[0])
        kind = Kind(words[1])
    except ValueError:
        raise Events2Error(f"not an events2 line: {line!r}") from None
    fields: dict[str, str] = {}
    for word in words[2:]:
        key, sep, value = word.partition(":")
        if not sep or not key:
            raise Events2Error(f"not a key:value word {word!r} in {line!r}")
        fields[key] = value
    if kind is Kind.END_OF_DUMP:
        if action is not Action.EXISTS or fields:
            raise Events2Error(f"unexpected end-of-dump line {line!r}")
    elif "name" not in fields:
        raise Events2Error(f"no resource name in {line!r}")
    return Event(action, kind, fields, timestamp)


def parse_stream(text: str) -> list[Event]:
    """Every event of a captured stream, in order (blank lines skipped)."""
    out = []
    for line in text.splitlines():
        event = parse_line(line)
        if event is not None:
            out.append(event)
    return out


# --- typed state of one resource -------------------------------------------------------------


@dataclass(frozen=True)
class HelperCall:
    """A user-mode helper DRBD ran (`fence-peer`, `unfence-peer`, `split-brain`, ...).
    `status` is the raw wait() status of the response (exit code << 8), None while it runs."""

    helper: str
    peer: str | None
    status: int | None = None
    timestamp: str | None = None

    @property
    def exit_code(self) -> int | None:
        return None if self.status is None else (self.status >> 8) & 0xFF


@dataclass(frozen=True)
class PeerState:
    """This host's connection to one peer, and that peer's disks as DRBD last reported."""

    name: str  # conn-name: the peer's host name in DRBD 9, "peer" in DRBD 8.4
    node_id: str | None
    connection: str  # Connected, Connecting, NetworkFailure, StandAlone, ...
    role: str  # Primary, Secondary, Unknown
    peer_disks: Mapping[int, str] = field(default_factory=dict)  # by volume
    replication: Mapping[int, str] = field(default_factory=dict)  # by volume

    @property
    def connected(self) -> bool:
        return self.connection == "Connected"


@dataclass(frozen=True)
class ResourceState:
    """Everything events2 said about one resource, merged."""

    name: str
    role: str = "Unknown"
    suspended: str = "no"  # no | user | no-data | fencing | quorum (or a comma list)
    disks: Mapping[int, str] = field(default_factory=dict)  # volume -> disk state
    peers: Mapping[str, PeerState] = field(default_factory=dict)  # by peer key
    helpers: tuple[HelperCall, ...] = ()  # the last few, oldest first
    split_brain: bool = False  # a split-brain helper ran and no connection came up since

    @property
    def io_suspended(self) -> bool:
        return self.suspended not in ("no", "")

    @property
    def pending_helpers(self) -> tuple[HelperCall, ...]:
        return tuple(h for h in self.helpers if h.status is None)

    def observation(self) -> ReplicaObservation:
        """Map onto the core's port type (two-node resources: the one peer).

        - disk: the worst local volume (a guest needs all its volumes);
        - connected: DRBD's connection state is Connected;
        - peer_role / peer_disk: only while connected (DRBD keeps the last value otherwise,
          which would be stale), worst peer volume;
        - split_brain: a split-brain helper was called and no connection came up since;
        - suspended: I/O is frozen for any reason; fence_frozen: by fencing alone;
          fence_pending: a fence-peer handler call has no response yet (after an events2
          restart a call made before it is not known: the new dump cannot show it).
        """
        peer = next(iter(self.peers.values()), None)
        connected = peer is not None and peer.connected
        peer_role = None
        peer_disk = None
        if peer is not None and connected:
            peer_role = _role(peer.role)
            peer_disk = _worst(_disk_state(d) for d in peer.peer_disks.values())
        reasons = {r for r in self.suspended.split(",") if r not in ("", "no")}
        return ReplicaObservation(
            resource=self.name,
            role=ReplicaRole.PRIMARY if self.role == "Primary" else ReplicaRole.SECONDARY,
            disk=_worst(_disk_state(d) for d in self.disks.values()) or DiskState.DISKLESS,
            connected=connected,
            peer_role=peer_role,
            peer_disk=peer_disk,
            split_brain=self.split_brain,
            suspended=bool(reasons),
            fence_frozen=reasons == {"fencing"},
            fence_pending=any(h.helper == "fence-peer" for h in self.pending_helpers),
        )


_DISK_ORDER = (
    DiskState.DISKLESS,
    DiskState.INCONSISTENT,
    DiskState.OUTDATED,
    DiskState.CONSISTENT,
    DiskState.UP_TO_DATE,
)


def _disk_state(word: str) -> DiskState | None:
    """DRBD disk state word -> DiskState; None for DUnknown (the peer's disk is not known).

    Transient local states (Attaching, Negotiating, Detaching) and any word this code does not
    know map to CONSISTENT, which the core treats as "not known to be current: wait": never a
    reason to promote, never a reason to give the guest up. Failed (an I/O error detached
    the disk) is DISKLESS."""
    return {
        "UpToDate": DiskState.UP_TO_DATE,
        "Consistent": DiskState.CONSISTENT,
        "Outdated": DiskState.OUTDATED,
        "Inconsistent": DiskState.INCONSISTENT,
        "Diskless": DiskState.DISKLESS,
        "Failed": DiskState.DISKLESS,
        "DUnknown": None,
    }.get(word, DiskState.CONSISTENT)


def _worst(states: Iterable[DiskState | None]) -> DiskState | None:
    known = [s for s in states if s is not None]
    if not known:
        return None
    return min(known, key=_DISK_ORDER.index)


def _role(word: str) -> ReplicaRole | None:
    return {"Primary": ReplicaRole.PRIMARY, "Secondary": ReplicaRole.SECONDARY}.get(word)


MAX_HELPERS = 8
SPLIT_BRAIN_HELPERS = ("split-brain", "initial-split-brain")


def _peer_key(fields: Mapping[str, str]) -> str:
    return fields.get("peer-node-id") or fields.get("conn-name", "")


def _volume(fields: Mapping[str, str]) -> int:
    try:
        return int(fields.get("volume", "0"))
    except ValueError:
        raise Events2Error(f"bad volume {fields.get('volume')!r}") from None


class ResourceTracker:
    """Folds events2 lines into `ResourceState`s. Pure; the watcher owns one.

    `apply` returns whether anything the core or an operator cares about changed (statistics
    and path lines do not count), so the watcher wakes the loop only for those."""

    def __init__(self) -> None:
        self._states: dict[str, ResourceState] = {}
        self.dump_complete = False

    def restart(self) -> None:
        """events2 was restarted: its new initial dump replaces what we knew, except a split
        brain seen before (a fresh dump cannot show a past split brain)."""
        self._states = {
            name: ResourceState(name, split_brain=True)
            for name, s in self._states.items()
            if s.split_brain
        }
        self.dump_complete = False

    def states(self) -> Mapping[str, ResourceState]:
        return dict(self._states)

    def get(self, name: str) -> ResourceState | None:
        return self._states.get(name)

    def observations(self) -> dict[str, ReplicaObservation]:
        return {
            n: s.observation()
            for n, s in self._states.items()
            if s.disks or s.peers or s.role != "Unknown"
        }

    def apply(self, event: Event) -> bool:
        if event.kind is Kind.END_OF_DUMP:
            changed = not self.dump_complete
            self.dump_complete = True
            return changed
        name = event.resource
        old = self._states.get(name, ResourceState(name))
        new = self._fold(old, event)
        if new is None:
            return self._states.pop(name, None) is not None
        if new == old and name in self._states:
            return False
        self._states[name] = new
        return True

    def feed(self, events: Iterable[Event]) -> None:
        for event in events:
            self.apply(event)

    @staticmethod
    def _fold(s: ResourceState, e: Event) -> ResourceState | None:
        f = e.fields
        destroy = e.action is Action.DESTROY
        if e.kind is Kind.RESOURCE:
            if destroy:
                return None
            if e.action is Action.RENAME:
                return replace(s, name=f.get("new_name", s.name))
            return replace(s, role=f.get("role", s.role), suspended=f.get("suspended", s.suspended))
        if e.kind is Kind.DEVICE:
            disks = dict(s.disks)
            if destroy:
                disks.pop(_volume(f), None)
            elif "disk" in f:
                disks[_volume(f)] = f["disk"]
            return replace(s, disks=disks)
        if e.kind is Kind.CONNECTION:
            peers = dict(s.peers)
            key = _peer_key(f)
            if destroy:
                peers.pop(key, None)
                return replace(s, peers=peers)
            old = peers.get(key) or PeerState(
                f.get("conn-name", key), f.get("peer-node-id"), "Unknown", "Unknown"
            )
            peer = replace(
                old,
                name=f.get("conn-name", old.name),
                connection=f.get("connection", old.connection),
                role=f.get("role", old.role),
            )
            peers[key] = peer
            split_brain = s.split_brain and not peer.connected
            return replace(s, peers=peers, split_brain=split_brain)
        if e.kind is Kind.PEER_DEVICE:
            peers = dict(s.peers)
            key = _peer_key(f)
            old = peers.get(key) or PeerState(
                f.get("conn-name", key), f.get("peer-node-id"), "Unknown", "Unknown"
            )
            vol = _volume(f)
            peer_disks = dict(old.peer_disks)
            replication = dict(old.replication)
            if destroy:
                peer_disks.pop(vol, None)
                replication.pop(vol, None)
            else:
                if "peer-disk" in f:
                    peer_disks[vol] = f["peer-disk"]
                if "replication" in f:
                    replication[vol] = f["replication"]
            peers[key] = replace(old, peer_disks=peer_disks, replication=replication)
            return replace(s, peers=peers)
        if e.kind is Kind.HELPER:
            return ResourceTracker._helper(s, e)
        return s  # path: not part of the replica's state

    @staticmethod
    def _helper(s: ResourceState, e: Event) -> ResourceState:
        f = e.fields
        helper = f.get("helper", "")
        peer = f.get("conn-name")
        helpers = list(s.helpers)
        split_brain = s.split_brain
        if e.action is Action.CALL:
            helpers.append(HelperCall(helper, peer, None, e.timestamp))
            if helper in SPLIT_BRAIN_HELPERS:
                split_brain = True
        elif e.action is Action.RESPONSE:
            try:
                status = int(f.get("status", ""))
            except ValueError:
                raise Events2Error(f"helper response without a status: {dict(f)}") from None
            for i in range(len(helpers) - 1, -1, -1):
                h = helpers[i]
                if h.helper == helper and h.status is None:
                    helpers[i] = replace(h, status=status)
                    break
            else:
                helpers.append(HelperCall(helper, peer, status, e.timestamp))
        return replace(s, helpers=tuple(helpers[-MAX_HELPERS:]), split_brain=split_brain)


def observations_from_dump(text: str) -> dict[str, ReplicaObservation]:
    """`drbd.sh status RES` output (an events2 --now dump) -> observations by resource."""
    tracker = ResourceTracker()
    tracker.feed(parse_stream(text))
    return tracker.observations()
