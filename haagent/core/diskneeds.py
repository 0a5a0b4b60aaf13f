"""Which host paths a guest's disks need, read from its libvirt domain XML.

Pure, like haagent.core.netneeds: the caller hands in the XML text; nothing here touches the
file system. `haagent check-config --here` checks the result on each host, so that a guest
whose image or volume is missing on a host it may move to is reported before a failure finds
out (issue 11 part 5):

- ``<disk type='file'><source file='/var/lib/images/g1.qcow2'/>``  -> a regular file
- ``<disk type='block'><source dev='/dev/vg0/g1'/>``                -> a block device
  (a DRBD device ``/dev/drbd/by-res/r0`` or ``/dev/drbd0`` exists only while the resource is
  configured on that host: on its two replica hosts, not elsewhere)
- ``type='network'`` (NBD, iSCSI, RBD, ...) and ``type='volume'`` (a libvirt storage pool)
  name nothing a host path check could verify: listed as unchecked, not silently skipped.
- a disk without a ``<source>`` (an empty CD-ROM drive) needs nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

# PATH_MAX on Linux: a longer path cannot be opened on any host.
MAX_PATH = 4095


class DiskNeedsError(ValueError):
    """The domain XML names a disk source that cannot be a host path (or is not domain XML)."""


@dataclass(frozen=True)
class DiskNeed:
    """One disk's source. `kind` is ``file`` or ``block`` (a path to check) or ``network`` or
    ``volume`` (`path` then says what it is, for the report; it is not checked)."""

    target: str  # the guest's device name (vda, sdb, ...), '' if the XML gives none
    kind: str
    path: str

    @property
    def checkable(self) -> bool:
        return self.kind in ("file", "block")


def disk_needs(xml_text: str) -> tuple[DiskNeed, ...]:
    """The sources of the domain's disks, in document order.

    Raises DiskNeedsError for XML that is not a domain, and for a file or block source that is
    not an absolute path without NUL bytes within PATH_MAX."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise DiskNeedsError(f"not well-formed XML: {exc}") from None
    if root.tag != "domain":
        raise DiskNeedsError(f"expected a <domain> document, got <{root.tag}>")
    needs: list[DiskNeed] = []
    for i, disk in enumerate(root.findall("./devices/disk"), 1):
        kind = disk.get("type", "file")  # libvirt's default disk type
        target_el = disk.find("target")
        target = target_el.get("dev", "") if target_el is not None else ""
        source = disk.find("source")
        if source is None:
            continue
        where = f"disk {i} ({target or 'no target'}, type={kind!r})"
        if kind in ("file", "block"):
            attribute = "file" if kind == "file" else "dev"
            path = source.get(attribute, "")
            if not path.startswith("/") or "\0" in path or len(path) > MAX_PATH:
                raise DiskNeedsError(
                    f"{where}: <source {attribute}=...> must be an absolute path of at most "
                    f"{MAX_PATH} characters, got {path[:80]!r}"
                )
            needs.append(DiskNeed(target, kind, path))
        elif kind == "network":
            proto, name = source.get("protocol", "?"), source.get("name", "")
            needs.append(DiskNeed(target, "network", f"{proto}:{name}"))
        elif kind == "volume":
            needs.append(
                DiskNeed(target, "volume", f"{source.get('pool', '?')}/{source.get('volume', '')}")
            )
        else:
            needs.append(DiskNeed(target, kind, ""))
    return tuple(needs)
