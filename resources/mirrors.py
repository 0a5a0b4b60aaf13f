"""Guest-RAID1 legs over libvirt: the `Mirrors` port.

A guest RAID1 (the "MHCoDi" layout) gives a guest one disk from each of two hosts; the guest
runs md RAID1 over them. Each disk is a *leg*, named by a leg id from the config. This adapter:

* `observe(guest)` reads `/proc/mdstat` and the md member state files from inside the running
  guest through qemu-guest-agent (haagent.resources.guest_agent; the guest needs `qemu-ga` and
  a `<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`),
  and reports each leg as in_sync / resyncing / faulty / missing (haagent.resources.mdstat)
  with the array's resync progress. Legs are recognised inside the guest by the disk serial
  this adapter gives them (`<serial>` = the leg id, visible as `/sys/block/vdX/serial`), not
  by the guest's device names, which follow probe order.
* `attach_leg(guest, leg_id, source)` hot-plugs the leg, live only, on the first free virtio
  target (vdb-vdz): a network disk (NBD or iSCSI, as QEMU's own initiator reaches it) or, for
  a source starting with "/", the holder's local block device.
* `detach_leg(guest, leg_id)` hot-unplugs it and waits until the guest released it.

Contracts:

* `observe` returns None when there is nothing to observe: the guest is not running on this
  host, its agent does not answer (still booting, or not installed), or no md array in it
  holds any of its legs (not assembled yet). None is never evidence of anything. It raises
  nothing for operating errors (they are logged).
* `attach_leg` is idempotent for the same leg and source: a disk already carrying this leg's
  serial and source is left alone. It never replaces a disk: this leg from another source
  raises `MirrorError`. A leg whose connection died (its server went away; QEMU's NBD client
  does not reconnect) must be detached first.
* `detach_leg` is idempotent (a leg not attached is done). It returns once the disk left the
  live definition; if the guest does not release it within `detach_timeout_s` it raises
  `MirrorError` and the outcome is unknown. A guest paused on a write error cannot release a
  disk at all, not even when resumed again and again (measured: 545 resumes in 60 s, the
  retried write pauses it each time before it handles the unplug), so detaching a dead leg
  does not un-pause a guest; see "error_policy" below.
* Attach and detach affect the live guest only. The persistent definition is the starter's
  business: QEMU refuses to start a guest whose network disk is unreachable, so a degraded
  start must start from a definition that holds the reachable leg only.
* `error_policy` ("stop" by default) is written on every attached leg: QEMU then pauses the
  guest on a failed write instead of passing the error to md. That is what makes the storage
  fence work (a cut-off guest stops writing), and it also means a leg whose holder died pauses
  the guest for good (QEMU sees the same lost connection in both cases, and has no command
  that changes a running disk's error policy); only a restart from the surviving leg gets it
  going. "report" passes the error to md, which fails the leg and goes on degraded; the
  storage fence then still stops every write to the revoked leg, but not the guest.

Expected operating errors raise `MirrorError`, a `HypervisorError` (unknown guest or leg, bad
source, libvirt failure); `UnknownOutcomeError` of the underlying connection passes through.
"""

from __future__ import annotations

import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import libvirt

from haagent.model import GuestSpec

# The port lives in haagent/ports.py; re-exported here for the tests that import it from here.
from haagent.ports import HypervisorError, MirrorObservation, Mirrors
from haagent.resources.guest_agent import GuestAgentError, GuestFileMissingError, read_file
from haagent.resources.mdstat import LegState, MdstatError, member_verdict, parse_mdstat

__all__ = [
    "ErrorPolicy",
    "LegSource",
    "LibvirtMirrors",
    "MirrorError",
    "MirrorObservation",
    "Mirrors",
    "leg_disk_xml",
    "parse_leg_source",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

ErrorPolicy = Literal["stop", "report"]

# virtio-blk serials are at most 20 bytes; the id must survive the guest's sysfs unchanged.
_LEG_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,19}")
_DEFAULT_PORTS = {"nbd": 10809, "iscsi": 3260}
# The virtio targets a leg may take (vda is the guest's own system disk by convention).
LEG_TARGETS = tuple(f"vd{chr(c)}" for c in range(ord("b"), ord("z") + 1))


class MirrorError(HypervisorError):
    """A leg operation could not be done (the message says why)."""


@dataclass(frozen=True)
class LegSource:
    """Where a leg is: an NBD export or an iSCSI LUN over the network, or (protocol "block",
    host "" and port 0) the holder's own block device at path `name`."""

    protocol: Literal["nbd", "iscsi", "block"]
    host: str
    port: int
    name: str  # NBD export name, "IQN/LUN" for iSCSI (libvirt's spelling), or the device path


def parse_leg_source(uri: str) -> LegSource:
    """`nbd://HOST[:PORT]/EXPORT`, `iscsi://HOST[:PORT]/IQN/LUN` or `/dev/...` as a LegSource.

    Raises ValueError naming the problem for anything else (another scheme, no host, no export,
    a LUN that is not a number, user info or a query, which libvirt's disk source cannot carry,
    a path with control characters or "..").
    """
    if uri.startswith("/"):
        if not uri.isprintable() or "/../" in f"{uri}/" or len(uri) > 4096:
            raise ValueError(f"leg source {uri!r}: not a plain absolute device path")
        return LegSource("block", "", 0, uri)
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"leg source {uri!r}: {exc}") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"leg source {uri!r}: the scheme must be nbd:// or iscsi://")
    if not parts.hostname:
        raise ValueError(f"leg source {uri!r}: no host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"leg source {uri!r}: user info, query and fragment are not supported")
    path = parts.path.lstrip("/")
    if parts.scheme == "nbd":
        if not path or "/" in path:
            raise ValueError(f"leg source {uri!r}: give one export name, nbd://host:port/EXPORT")
    else:
        iqn, _, lun = path.rpartition("/")
        if not iqn or not lun.isdigit():
            raise ValueError(f"leg source {uri!r}: give the target and LUN, iscsi://host/IQN/LUN")
    protocol: Literal["nbd", "iscsi"] = "nbd" if parts.scheme == "nbd" else "iscsi"
    return LegSource(protocol, parts.hostname, port or _DEFAULT_PORTS[protocol], path)


def leg_disk_xml(
    leg_id: str, target: str, source: LegSource, error_policy: ErrorPolicy = "stop"
) -> str:
    """The libvirt `<disk>` of one leg: a raw disk on virtio `target`, serial = leg id."""
    if not _LEG_ID_RE.fullmatch(leg_id):
        raise ValueError(f"leg id {leg_id!r}: 1-20 of A-Z a-z 0-9 . _ - (it is the disk serial)")
    if not re.fullmatch(r"vd[a-z]", target):
        raise ValueError(f"target dev {target!r}: expected a virtio target vda-vdz")
    if source.protocol == "block":
        disk = ET.Element("disk", type="block", device="disk")
    else:
        disk = ET.Element("disk", type="network", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw", error_policy=error_policy)
    if source.protocol == "block":
        ET.SubElement(disk, "source", dev=source.name)
    else:
        src = ET.SubElement(disk, "source", protocol=source.protocol, name=source.name)
        ET.SubElement(src, "host", name=source.host, port=str(source.port))
    ET.SubElement(disk, "target", dev=target, bus="virtio")
    ET.SubElement(disk, "serial").text = leg_id
    return ET.tostring(disk, encoding="unicode")


class ConnectionRunner(Protocol):
    """What this adapter needs from haagent.resources.libvirt_guests.LibvirtHypervisor."""

    def call(self, what: str, operation: Callable[[libvirt.virConnect], _T]) -> Awaitable[_T]: ...


@dataclass(frozen=True)
class _Disk:
    target: str
    serial: str | None
    source: LegSource | None
    xml: str


def _disks(dom: libvirt.virDomain) -> list[_Disk]:
    root = ET.fromstring(dom.XMLDesc(0))
    found = []
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        if target is None:
            continue
        src = disk.find("source")
        host = None if src is None else src.find("host")
        source = None
        if src is not None and disk.get("type") == "block" and src.get("dev"):
            source = LegSource("block", "", 0, src.get("dev", ""))
        elif src is not None and host is not None and src.get("protocol") in _DEFAULT_PORTS:
            protocol: Literal["nbd", "iscsi"] = "nbd" if src.get("protocol") == "nbd" else "iscsi"
            port = int(host.get("port") or _DEFAULT_PORTS[protocol])
            source = LegSource(protocol, host.get("name", ""), port, src.get("name", ""))
        serial = disk.find("serial")
        found.append(
            _Disk(
                target=target.get("dev", ""),
                serial=None if serial is None else (serial.text or "").strip(),
                source=source,
                xml=ET.tostring(disk, encoding="unicode"),
            )
        )
    return found


class LibvirtMirrors:
    """The `Mirrors` port over one libvirt connection (see the module docstring).

    The port speaks of guests; libvirt of domains, and a guest's `domain` may have another
    name (config `domain = ...`). `leg_ids(guest)` gives the configured leg ids of a guest
    (empty for a guest that is not a RAID1 guest): every one of them gets a state in an
    observation, "missing" when the array does not hold it. `domain_of(guest)` names the
    libvirt domain of a guest that has legs (it is asked for no other). `for_guests` builds
    both from the guests' specs, as the daemon does. Calls run through `runner.call` (a
    LibvirtHypervisor: worker thread, call deadline, reconnects). `agent_timeout_s` bounds
    each guest-agent command.
    """

    def __init__(
        self,
        runner: ConnectionRunner,
        leg_ids: Callable[[str], Collection[str]],
        *,
        domain_of: Callable[[str], str],
        error_policy: ErrorPolicy = "stop",
        agent_timeout_s: int = 5,
        detach_timeout_s: float = 20.0,
    ) -> None:
        self._runner = runner
        self._leg_ids = leg_ids
        self._domain_of = domain_of
        self._error_policy: ErrorPolicy = error_policy
        self._agent_timeout_s = agent_timeout_s
        self._detach_timeout_s = detach_timeout_s

    @classmethod
    def for_guests(
        cls,
        runner: ConnectionRunner,
        guests: Iterable[GuestSpec],
        *,
        error_policy: ErrorPolicy = "stop",
        agent_timeout_s: int = 5,
        detach_timeout_s: float = 20.0,
    ) -> LibvirtMirrors:
        """The adapter for the guests among `guests` that have legs (their domains by spec)."""
        raid1 = {spec.name: spec for spec in guests if spec.legs}
        return cls(
            runner,
            lambda g: tuple(leg.id for leg in raid1[g].legs) if g in raid1 else (),
            domain_of=lambda g: raid1[g].domain,
            error_policy=error_policy,
            agent_timeout_s=agent_timeout_s,
            detach_timeout_s=detach_timeout_s,
        )

    def _check_leg(self, guest: str, leg_id: str) -> str:
        """The guest's domain, once `leg_id` is known to be one of its legs."""
        if leg_id not in self._leg_ids(guest):
            raise MirrorError(f"{guest}: no leg {leg_id!r} is configured")
        return self._domain_of(guest)

    async def observe(self, guest: str) -> MirrorObservation | None:
        legs = tuple(self._leg_ids(guest))
        if not legs:
            return None
        timeout_s = self._agent_timeout_s
        domain = self._domain_of(guest)

        def read(conn: libvirt.virConnect) -> MirrorObservation | None:
            try:
                dom = conn.lookupByName(domain)
            except libvirt.libvirtError:
                return None
            if not dom.isActive():
                return None
            try:
                return _observe_in_guest(dom, guest, legs, timeout_s)
            except (GuestAgentError, MdstatError) as exc:
                log.info("%s: no mirror observation: %s", guest, exc)
                return None

        return await self._runner.call(f"observe mirror of {guest}", read)

    async def attach_leg(self, guest: str, leg_id: str, source: str) -> None:
        domain = self._check_leg(guest, leg_id)
        try:
            wanted = parse_leg_source(source)
            leg_disk_xml(leg_id, LEG_TARGETS[0], wanted)  # checks the leg id early
        except ValueError as exc:
            raise MirrorError(f"{guest}: {exc}") from None
        policy = self._error_policy

        def attach(conn: libvirt.virConnect) -> None:
            dom = _active(conn, guest, domain)
            disks = _disks(dom)
            for disk in disks:
                if disk.serial == leg_id:
                    if disk.source == wanted:
                        return
                    raise MirrorError(
                        f"{guest}: cannot attach leg {leg_id} from {source}: {disk.target} "
                        f"already holds it from {disk.source}; detach it first"
                    )
            used = {d.target for d in disks}
            target = next((t for t in LEG_TARGETS if t not in used), None)
            if target is None:
                raise MirrorError(f"{guest}: no free virtio target (vdb-vdz) for leg {leg_id}")
            xml = leg_disk_xml(leg_id, target, wanted, policy)
            try:
                dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                raise MirrorError(f"{guest}: attach leg {leg_id}: {exc}") from exc

        await self._runner.call(f"attach leg {leg_id} to {guest}", attach)

    async def detach_leg(self, guest: str, leg_id: str) -> None:
        domain = self._check_leg(guest, leg_id)
        timeout_s = self._detach_timeout_s

        def detach(conn: libvirt.virConnect) -> None:
            dom = _active(conn, guest, domain)
            disk = next((d for d in _disks(dom) if d.serial == leg_id), None)
            if disk is None:
                return
            try:
                dom.detachDeviceFlags(disk.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                raise MirrorError(f"{guest}: detach leg {leg_id}: {exc}") from exc
            # libvirt waits only a few seconds for the guest's acknowledgement; wait for the
            # disk to leave the live definition so that the caller knows QEMU let go of it.
            deadline = time.monotonic() + timeout_s
            while any(d.serial == leg_id for d in _disks(dom)):
                if time.monotonic() > deadline:
                    raise MirrorError(
                        f"{guest}: leg {leg_id} still attached {timeout_s} s after the detach "
                        "request (a paused guest cannot release it); outcome unknown"
                    )
                time.sleep(0.2)

        await self._runner.call(f"detach leg {leg_id} from {guest}", detach)


def _active(conn: libvirt.virConnect, guest: str, domain: str) -> libvirt.virDomain:
    try:
        dom = conn.lookupByName(domain)
    except libvirt.libvirtError as exc:
        raise MirrorError(f"{guest}: no such guest here (domain {domain!r}: {exc})") from exc
    if not dom.isActive():
        raise MirrorError(f"{guest}: not running here (domain {domain!r})")
    return dom


def _observe_in_guest(
    dom: libvirt.virDomain, guest: str, legs: Collection[str], timeout_s: int
) -> MirrorObservation:
    """One reading of the guest's md state, legs matched by disk serial (blocking)."""
    arrays = parse_mdstat(read_file(dom, "/proc/mdstat", timeout_s))
    members: dict[str, LegState] = {leg: "missing" for leg in legs}
    progress: float | None = None
    for array in arrays.values():
        found = False
        for member in array.members:
            try:
                serial = read_file(dom, f"/sys/block/{member.device}/serial", timeout_s).strip()
            except GuestFileMissingError:
                continue  # not a virtio disk (or gone since mdstat was read): not a leg
            if serial not in members:
                continue
            try:
                state: str | None = read_file(
                    dom, f"/sys/block/{array.name}/md/dev-{member.device}/state", timeout_s
                )
            except GuestFileMissingError:
                state = None
            members[serial] = member_verdict(array, member, state)
            found = True
        if found:
            # One array holds a guest's legs; its sync is the legs' resync.
            if array.sync_action in ("resync", "recovery"):
                progress = array.sync_progress
            break
    else:
        # No array holds any leg: the guest has not assembled it (yet: its agent may answer
        # before its md starts while it boots). That says nothing about the legs; reported as
        # "missing" they would be committed stale on a guess.
        raise MdstatError("no md array holds any of the guest's legs (not assembled yet?)")
    if "resyncing" not in members.values():
        # mdstat is read before the member state files: a recovery that ended in between
        # leaves its last progress behind, while the port promises progress only while a leg
        # resyncs (seen at load ~11: both legs in_sync with progress 0.95).
        progress = None
    return MirrorObservation(guest=guest, members=members, resync_progress=progress)
