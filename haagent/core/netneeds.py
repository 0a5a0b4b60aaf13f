"""Which host network interfaces a guest needs, read from its libvirt domain XML.

Pure: the caller hands in the XML text (read from the `xml` file of the guest's config); nothing
here touches libvirt, netlink or the file system. The result is what must exist on a host, be
up and (where it has a lower device) have carrier, before the guest may run there:

- ``<interface type='bridge'><source bridge='br0'/>``     -> the bridge ``br0``
- ``<interface type='direct'><source dev='eth0.100' mode='bridge'/>`` (macvtap)
                                                           -> the lower device ``eth0.100``
  (a VLAN interface is just such a device name; the adapter checks its carrier)
- ``<interface type='network'><source network='default'/>`` -> the libvirt network
  ``network:default``. Its bridge is known only to each host's libvirtd, so each node
  resolves it in its own check (`haagent.resources.netlink.check_needs`): the network must be
  defined and active there, and its bridge must work like a named bridge. That is exactly
  what libvirt attaches the guest to when it starts there, whatever the bridge is called on
  each host. The ``network:`` prefix cannot clash with an interface (a Linux interface name
  never contains ':').
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
# A libvirt network is named by this prefix and its name in a guest's `networks`.
LIBVIRT_NETWORK = "network:"
# libvirt bounds network names only by its XML; this bound keeps a committed condition small.
MAX_NETWORK_NAME = 64

_UNCHECKED_TYPES = frozenset(
    {"user", "ethernet", "vhostuser", "hostdev", "mcast", "udp", "server", "client", "vdpa"}
)


class NetNeedsError(ValueError):
    """The domain XML names a network the agent cannot check (or is not domain XML)."""


@dataclass(frozen=True)
class NetworkNeed:
    """One host interface a guest's NIC attaches to. `kind` is ``bridge``, ``direct`` or
    ``network`` (`interface` is then ``network:NAME``, resolved by each host); `mode` is the
    macvtap mode of a direct NIC ('' otherwise)."""

    interface: str
    kind: str
    mode: str = ""


def network_needs(xml_text: str) -> tuple[NetworkNeed, ...]:
    """The host interfaces the domain's NICs need, in document order, without duplicates.

    Raises NetNeedsError with a readable reason for XML that is not a domain, and for a NIC
    whose source is missing or not a valid interface (or libvirt network) name."""
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
            if not valid_network_name(name):
                raise NetNeedsError(
                    f"{where}: <source network=...> must name a libvirt network (1-"
                    f"{MAX_NETWORK_NAME} characters, no '/' or whitespace), got {name!r}"
                )
            need = NetworkNeed(LIBVIRT_NETWORK + name, "network")
        elif kind == "bridge":
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


def valid_network_name(name: str) -> bool:
    """Could `name` be a libvirt network name we can carry (no '/', which libvirt refuses)?"""
    return 0 < len(name) <= MAX_NETWORK_NAME and not any(
        c == "/" or c.isspace() or not c.isprintable() for c in name
    )


def libvirt_network(need: str) -> str | None:
    """The libvirt network a guest's need names (``network:NAME`` -> NAME), else None."""
    return need[len(LIBVIRT_NETWORK) :] if need.startswith(LIBVIRT_NETWORK) else None
