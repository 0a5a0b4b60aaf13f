"""Bring a stored (persistent) libvirt definition in line with the one the agent intends.

Why: a host may keep an old persistent definition of a guest: one written by an earlier start
of this agent (a raid1 guest's definition lists the legs of *that* start, one of which may be
stale now), or an old disk layout an admin left behind. Starting it as stored could open a
disk the core did not choose: for a raid1 guest a stale leg, whose missed writes md would then
treat as current (DESIGN rule 5: never start from a stale leg). So before a start that has the
intended XML (the guest's configured XML plus the legs the core allows,
haagent.resources.raid1_disks), the stored definition of an inactive domain is compared with it
in what matters, its disks, and redefined from the intended XML when they differ.

Why redefine rather than start transient from the intended XML (`createXML`): the adapter's
contracts rest on a persistent definition (the owner record is written into it before
`create()`, a destroy leaves it with its owner record, migration keeps the source's
definition), and a transient start next to a persistent definition of the same name would
leave the stale disk list in the definition for the next plain start. Redefining keeps one
definition, and it is the intended one by the time `create()` runs.

Contracts:
- `definition_to_apply(stored, intended, uuid)` is pure: None when the stored definition's
  disks equal the intended ones (nothing to do), else the intended XML to define, carrying the
  stored domain's UUID (libvirt refuses a definition of an existing name under another UUID).
  An intended XML that names another UUID raises `DefinitionError` (the message says how to
  resolve it): replacing a domain's identity is an admin's decision.
- Disks are compared by everything but what libvirt fills in on its own (`<address>`,
  `<alias>`, `<backingStore>`): an unknown difference counts as a difference, so the doubt
  always falls on the safe side (a redefinition of an identical layout is harmless).
- `align_definition(conn, dom, intended)` (blocking, libvirt-python) applies it to an inactive
  domain and returns the domain to start. The caller guarantees the domain is inactive: a
  running domain's disks are not changed by a new persistent definition.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import libvirt

__all__ = ["DefinitionError", "align_definition", "definition_to_apply", "disk_layout"]

log = logging.getLogger(__name__)

# Children libvirt adds to a disk by itself: the PCI address it chose, the device alias of a
# running domain, the probed backing chain. They say nothing about which data the guest opens.
_LIBVIRT_FILLED = frozenset({"address", "alias", "backingStore"})


class DefinitionError(ValueError):
    """The intended XML cannot replace the stored definition (the message says why)."""


def _canonical(element: ET.Element) -> str:
    """One element as a stable string: sorted attributes, stripped text, children in order,
    without the children libvirt fills in."""
    attrs = " ".join(f"{k}={v!r}" for k, v in sorted(element.attrib.items()))
    text = (element.text or "").strip()
    children = "".join(_canonical(child) for child in element if child.tag not in _LIBVIRT_FILLED)
    return f"<{element.tag} {attrs}>{text}{children}</{element.tag}>"


def _parse(xml: str, what: str) -> ET.Element:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DefinitionError(f"{what} domain XML: {exc}") from None
    if root.tag != "domain":
        raise DefinitionError(f"{what} domain XML: expected <domain>, got <{root.tag}>")
    return root


def disk_layout(xml: str) -> tuple[str, ...]:
    """The domain's disks (and the disk-like `<filesystem>` and `<hostdev>` passthroughs) in a
    comparable form, sorted: what decides which data a started guest opens."""
    root = _parse(xml, "a")
    devices = root.find("devices")
    if devices is None:
        return ()
    return tuple(
        sorted(_canonical(d) for d in devices if d.tag in ("disk", "filesystem", "hostdev"))
    )


def definition_to_apply(stored: str, intended: str, uuid: str) -> str | None:
    """See the module contract."""
    root = _parse(intended, "the intended")
    if disk_layout(stored) == disk_layout(intended):
        return None
    named = (root.findtext("uuid") or "").strip()
    if named and named.lower() != uuid.lower():
        raise DefinitionError(
            f"the guest's XML names uuid {named}, the domain defined on this host has {uuid}: "
            "undefine the old domain (virsh undefine) or drop <uuid> from the guest's XML"
        )
    if not named:
        element = ET.Element("uuid")
        element.text = uuid
        root.insert(1, element)  # after <name> by convention; libvirt does not mind order
    return ET.tostring(root, encoding="unicode")


def align_definition(
    conn: libvirt.virConnect, dom: libvirt.virDomain, intended: str
) -> libvirt.virDomain:
    """Redefine the inactive `dom` from `intended` if its stored disks differ (module
    contract); return the domain to start. Raises DefinitionError or libvirtError."""
    stored = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml = definition_to_apply(stored, intended, dom.UUIDString())
    if xml is None:
        return dom
    log.warning(
        "domain %s: its stored definition has other disks than the agent intends; "
        "redefining it before the start (a stale leg or an old layout must not start)",
        dom.name(),
    )
    return conn.defineXML(xml)
