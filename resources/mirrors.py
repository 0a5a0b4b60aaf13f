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
* `attach_leg(guest, leg_id, source)` hot-plugs the leg as a network disk (NBD or iSCSI, as
  QEMU's own initiator reaches it) on the leg's target dev, live only.
* `detach_leg(guest, leg_id)` hot-unplugs it and waits until the guest released it.

Contracts:

* `observe` returns None when there is nothing to observe: the guest is not running on this
  host, or its agent does not answer (still booting, or not installed). None is never evidence
  of anything. It raises nothing for operating errors (they are logged).
* `attach_leg` is idempotent for the same leg and source: a disk already carrying this leg's
  serial and source on the target is left alone. It never replaces a disk: an occupied target
  (another leg, or this leg from another source) raises `MirrorError`. A leg whose connection
  died (its server went away; QEMU's NBD client does not reconnect) must be detached first.
* `detach_leg` is idempotent (a leg not attached is done). It returns once the disk left the
  live definition; if the guest does not release it within `detach_timeout_s` (a paused guest
  cannot acknowledge the unplug) it raises `MirrorError` and the outcome is unknown.
* Attach and detach affect the live guest only. The persistent definition is the starter's
  business: QEMU refuses to start a guest whose network disk is unreachable, so a degraded
  start must start from a definition that holds the reachable leg only.
* `error_policy` ("stop" by default) is written on every attached leg: QEMU then pauses the
  guest on a failed write instead of passing the error to md. That is what makes the storage
  fence work (a cut-off guest stops writing), and it also means a leg whose holder died pauses
  the guest until the leg is detached; "report" passes the error to md, which fails the leg.

Expected operating errors raise `MirrorError` (unknown guest or leg, bad source, libvirt
failure); `HypervisorError`/`UnknownOutcomeError` of the underlying connection pass through.
"""

from __future__ import annotations

import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import libvirt

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

# --- the port (copied from haagent/ports.py of the raid1core branch; import it from there once
# both branches are merged) ---------------------------------------------------------------------


@dataclass(frozen=True)
class MirrorObservation:
    guest: str
    members: Mapping[str, str]  # leg id -> "in_sync" | "resyncing" | "faulty" | "missing"
    resync_progress: float | None


class Mirrors(Protocol):
    async def observe(self, guest: str) -> MirrorObservation | None: ...
    async def attach_leg(self, guest: str, leg_id: str, source: str) -> None: ...
    async def detach_leg(self, guest: str, leg_id: str) -> None: ...


# ------------------------------------------------------------------------------------------------

ErrorPolicy = Literal["stop", "report"]

# virtio-blk serials are at most 20 bytes; the id must survive the guest's sysfs unchanged.
_LEG_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,19}")
_TARGET_RE = re.compile(r"(vd|sd|xvd)[a-z]{1,2}")
_DEFAULT_PORTS = {"nbd": 10809, "iscsi": 3260}


class MirrorError(RuntimeError):
    """A leg operation could not be done (the message says why)."""


@dataclass(frozen=True)
class LegSource:
    """Where a leg is reached over the network: an NBD export or an iSCSI LUN."""

    protocol: Literal["nbd", "iscsi"]
    host: str
    port: int
    name: str  # NBD export name, or "IQN/LUN" for iSCSI (libvirt's spelling)


def parse_leg_source(uri: str) -> LegSource:
    """`nbd://HOST[:PORT]/EXPORT` or `iscsi://HOST[:PORT]/IQN/LUN` as a LegSource.

    Raises ValueError naming the problem for anything else (another scheme, no host, no export,
    a LUN that is not a number, user info or a query, which libvirt's disk source cannot carry).
    """
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
    """The libvirt `<disk>` of one leg: a raw network disk on virtio `target`, serial = leg id."""
    if not _LEG_ID_RE.fullmatch(leg_id):
        raise ValueError(f"leg id {leg_id!r}: 1-20 of A-Z a-z 0-9 . _ - (it is the disk serial)")
    if not _TARGET_RE.fullmatch(target):
        raise ValueError(f"target dev {target!r}: expected vdX")
    disk = ET.Element("disk", type="network", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw", error_policy=error_policy)
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
        if src is not None and host is not None and src.get("protocol") in _DEFAULT_PORTS:
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

    `legs[guest][leg_id]` is the target dev (vdb, ...) the leg takes in that guest. Calls run
    through `runner.call` (a LibvirtHypervisor: worker thread, call deadline, reconnects).
    `agent_timeout_s` bounds each guest-agent command; `md_root` is where the guest's md
    sysfs lives.
    """

    def __init__(
        self,
        runner: ConnectionRunner,
        legs: Mapping[str, Mapping[str, str]],
        *,
        error_policy: ErrorPolicy = "stop",
        agent_timeout_s: int = 5,
        detach_timeout_s: float = 20.0,
    ) -> None:
        self._runner = runner
        self._legs = {g: dict(targets) for g, targets in legs.items()}
        self._error_policy: ErrorPolicy = error_policy
        self._agent_timeout_s = agent_timeout_s
        self._detach_timeout_s = detach_timeout_s

    def _target(self, guest: str, leg_id: str) -> str:
        try:
            return self._legs[guest][leg_id]
        except KeyError:
            raise MirrorError(f"{guest}: no leg {leg_id!r} is configured") from None

    async def observe(self, guest: str) -> MirrorObservation | None:
        legs = self._legs.get(guest)
        if legs is None:
            return None
        timeout_s = self._agent_timeout_s

        def read(conn: libvirt.virConnect) -> MirrorObservation | None:
            try:
                dom = conn.lookupByName(guest)
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
        target = self._target(guest, leg_id)
        try:
            wanted = parse_leg_source(source)
            xml = leg_disk_xml(leg_id, target, wanted, self._error_policy)
        except ValueError as exc:
            raise MirrorError(f"{guest}: {exc}") from None

        def attach(conn: libvirt.virConnect) -> None:
            dom = _active(conn, guest)
            for disk in _disks(dom):
                if disk.target == target or disk.serial == leg_id:
                    if disk.target == target and disk.serial == leg_id and disk.source == wanted:
                        return
                    raise MirrorError(
                        f"{guest}: cannot attach leg {leg_id} on {target}: {disk.target} "
                        f"already holds leg {disk.serial} from {disk.source}; detach it first"
                    )
            try:
                dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                raise MirrorError(f"{guest}: attach leg {leg_id}: {exc}") from exc

        await self._runner.call(f"attach leg {leg_id} to {guest}", attach)

    async def detach_leg(self, guest: str, leg_id: str) -> None:
        self._target(guest, leg_id)
        timeout_s = self._detach_timeout_s

        def detach(conn: libvirt.virConnect) -> None:
            dom = _active(conn, guest)
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


def _active(conn: libvirt.virConnect, guest: str) -> libvirt.virDomain:
    try:
        dom = conn.lookupByName(guest)
    except libvirt.libvirtError as exc:
        raise MirrorError(f"{guest}: no such guest here ({exc})") from exc
    if not dom.isActive():
        raise MirrorError(f"{guest}: not running here")
    return dom


def _observe_in_guest(
    dom: libvirt.virDomain, guest: str, legs: Mapping[str, str], timeout_s: int
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
    return MirrorObservation(guest=guest, members=members, resync_progress=progress)
