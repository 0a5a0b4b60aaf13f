"""Libvirt disk XML for raid1 legs: the disks a raid1 guest starts with, and the one a
re-attach adds. Pure (ElementTree only), so the executor and the tests share it.

Contract:
- A leg's disk carries the leg id as its virtio serial: the guest sees it as
  /dev/disk/by-id/virtio-<leg id>, which is how the array's members are told apart.
- `error_policy='stop'`: a write the leg refuses (its holder stopped exporting it to this
  node: storage fencing) pauses the guest instead of failing the member silently.
- A source starting with "/" is the holder's local block device; else an nbd:// or iscsi://
  URI (the config checked it strictly with haagent.leguri; parsed again here).
- `with_leg_disks` refuses a domain XML that already names a leg's serial or has no
  <devices>: the admin's XML holds everything but the legs, which the agent decides per start.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from haagent.core.decisions import StartLeg
from haagent.resources.mirrors import leg_disk_xml, parse_leg_source


class LegDiskError(ValueError):
    """The domain XML or a leg source cannot make a leg disk."""


def leg_disk(leg_id: str, source: str, target: str) -> ET.Element:
    """The <disk> element of one leg, attached as virtio disk `target` (e.g. "vdb"): the
    same disk the re-attach adds (resources/mirrors.py), built by the same code."""
    try:
        return ET.fromstring(leg_disk_xml(leg_id, target, parse_leg_source(source)))
    except ValueError as exc:
        raise LegDiskError(f"leg {leg_id}: {exc}") from None


def free_targets(root: ET.Element, count: int) -> list[str]:
    """`count` virtio target names (vdb, vdc, ...) no disk of `root` uses."""
    used = {t.get("dev") for t in root.iter("target")}
    names = [f"vd{chr(c)}" for c in range(ord("b"), ord("z") + 1)]
    free = [n for n in names if n not in used]
    if len(free) < count:
        raise LegDiskError("no free virtio disk target (vdb-vdz) for a leg")
    return free[:count]


def with_leg_disks(xml: str, legs: Sequence[StartLeg]) -> str:
    """`xml` with one disk per leg added to its <devices> (module contract)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LegDiskError(f"domain XML: {exc}") from None
    devices = root.find("devices")
    if devices is None:
        raise LegDiskError("domain XML has no <devices>")
    serials = {s.text for s in devices.iter("serial")}
    for leg in legs:
        if leg.leg in serials:
            raise LegDiskError(f"domain XML already has a disk with serial {leg.leg!r}")
    for leg, target in zip(legs, free_targets(root, len(legs)), strict=True):
        devices.append(leg_disk(leg.leg, leg.source, target))
    return ET.tostring(root, encoding="unicode")
