"""Which host network interfaces a guest needs, read from its libvirt domain XML.

Pure: the caller hands in the XML text (read from the `xml` file of the guest's config); nothing
here touches libvirt, netlink or the file system. The result is what must exist on a host, be
up and (where it has a lower device) have carrier, before the guest may run there:

- ``<interface type='bridge'><source bridge='br0'/>``     -> the bridge ``br0``
- ``<interface type='direct'><source dev='eth0.100' mode='bridge'/>`` (macvtap)
                                                           -> the lower device ``eth0.100``
  (a VLAN interface is just such a device name; the adapter checks its carrier)
- ``<interface type='network'><source network='default'/>`` -> refused with `NetNeedsError`:
  the bridge of a libvirt network is known only to that host's libvirtd, so checking it would
  need I/O per host and a network that exists by name may sit on a different bridge on each
  host. Name the bridge instead (``type='bridge'``).
- ``type='user'`` (SLIRP), ``'ethernet'`` (a tap the guest's own scripts make), ``'vhostuser'``,
  ``'hostdev'``, ``'mcast'``/``'udp'``/``'server'``/``'client'`` need no named host interface and
  are skipped: nothing on the host could be checked for them.

A ``<vlan><tag id=.../>`` inside an interface (Open vSwitch or SR-IOV tagging) is not checked:
the host device that carries the tag is the bridge or device named by the source, which is.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

# Longest Linux interface name (IFNAMSIZ - 1): a longer name cannot exist on any host.
MAX_IFNAME = 15

_UNCHECKED_TYPES = frozenset(
    {"user", "ethernet", "vhostuser", "hostdev", "mcast", "udp", "server", "client", "vdpa"}
)


class NetNeedsError(ValueError):
    """The domain XML names a network the agent cannot check (or is not domain XML)."""


@dataclass(frozen=True)
class NetworkNeed:
    """One host interface a guest's NIC attaches to. `kind` is ``bridge`` or ``direct``;
    `mode` is the macvtap mode of a direct NIC ('' for a bridge)."""

    interface: str
    kind: str
    mode: str = ""


def network_needs(xml_text: str) -> tuple[NetworkNeed, ...]:
    """The host interfaces the domain's NICs need, in document order, without duplicates.

    Raises NetNeedsError with a readable reason for XML that is not a domain, for a NIC whose
    source is missing or not a valid interface name, and for ``type='network'`` NICs."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise NetNeedsError(f"not well-formed XML: {exc}") from None
    if root.tag != "domain":
        raise NetNeedsError(f"expected a <domain> document, got <{root.tag}>")
    needs: list[NetworkNeed] = []
    for i, nic in enumerate(root.findall("./devices/interface"), 1):
        kind = nic.get("type", "")
        where = f"interface {i} (type={kind!r})"
        source = nic.find("source")
        if kind in _UNCHECKED_TYPES:
            continue
        if kind == "network":
            name = source.get("network", "") if source is not None else ""
            raise NetNeedsError(
                f"{where}: libvirt network {name!r} is not supported (its bridge is known only "
                "to each host's libvirtd); use <interface type='bridge'> with the bridge's name"
            )
        if kind == "bridge":
            need = NetworkNeed(_ifname(where, source, "bridge"), "bridge")
        elif kind == "direct":
            mode = source.get("mode", "vepa") if source is not None else ""
            need = NetworkNeed(_ifname(where, source, "dev"), "direct", mode)
        else:
            raise NetNeedsError(f"{where}: unknown interface type")
        if all(n.interface != need.interface for n in needs):
            needs.append(need)
    return tuple(needs)


def needed_interfaces(xml_text: str) -> tuple[str, ...]:
    """Just the interface names of `network_needs`: what a `GuestSpec` carries."""
    return tuple(n.interface for n in network_needs(xml_text))


def _ifname(where: str, source: ET.Element | None, attribute: str) -> str:
    name = source.get(attribute, "") if source is not None else ""
    if not valid_ifname(name):
        raise NetNeedsError(
            f"{where}: <source {attribute}=...> must name a host interface (1-{MAX_IFNAME} "
            f"characters, no '/', ':' or whitespace), got {name!r}"
        )
    return name


def valid_ifname(name: str) -> bool:
    """Could `name` be a Linux interface name (what the kernel's dev_valid_name accepts)?"""
    return (
        0 < len(name) <= MAX_IFNAME
        and name not in (".", "..")
        and not any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
    )
