"""Host network checks with pyroute2, and a netlink link-event watcher that wakes the loop.

`check_links(needed)` dumps this network namespace's links once (one RTM_GETLINK dump, a few
milliseconds for hundreds of links) and says, for each needed interface that does not work,
why: ``absent``, ``down`` (administratively), ``no carrier``, or for a bridge whose uplink
ports all lost carrier, ``no carrier on its ports (eth0)``. The rules (`problems`, pure):

- every needed interface must exist and be administratively up (IFF_UP);
- a device with a lower side of its own (physical NIC, veth, VLAN, macvlan/macvtap, bond)
  must have carrier (IFLA_CARRIER): a VLAN device or a macvtap source follows its lower
  device's carrier, so a pulled cable shows on them too;
- a bridge must have carrier on at least one uplink port when it has any: its ports other
  than guests' tap devices (kind ``tun``). A bridge with no uplink (a private, host-only
  bridge, as in openSUSE's HA guide) only has to exist and be up: its own carrier depends on
  whether a guest is attached, which says nothing about the network;
- a libvirt network (``network:NAME``) must be defined and active in this host's libvirtd
  (asked by a `Resolver`, resources.libvirt_networks) and its bridge must work as above.

`LinkWatcher` is a non-blocking AF_NETLINK socket subscribed to RTMGRP_LINK and registered
with the asyncio loop (`add_reader`): any link message (added, removed, up/down, carrier) calls
`on_change` from the loop thread, at once and without a thread or a blocking read. It does not
interpret messages: the caller re-runs `check_links`, so a lost or overrun message (ENOBUFS)
costs nothing but a re-check, which the caller also does periodically.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import NetlinkError as Pyroute2NetlinkError

from haagent.core.netneeds import libvirt_network

log = logging.getLogger("haagent")

IFF_UP = 0x1
RTMGRP_LINK = 0x1
NETLINK_ROUTE = 0
# Kinds that are a guest's own end (its tap), never an uplink of the bridge they sit on.
_GUEST_PORT_KINDS = frozenset({"tun"})

# What this host's libvirtd says of a libvirt network: (its bridge, "") or (None, why not).
Resolved = tuple[str | None, str]
# Network names -> Resolved, for each (resources.libvirt_networks.resolve_networks).
Resolver = Callable[[Sequence[str]], Mapping[str, Resolved]]


class NetlinkError(RuntimeError):
    """The links could not be listed (the check's outcome is unknown, not "all fine")."""


@dataclass(frozen=True)
class LinkInfo:
    """What the checks need of one link (from an RTM_NEWLINK message)."""

    name: str
    index: int
    kind: str  # IFLA_INFO_KIND ("bridge", "veth", "vlan", ...); "" for a physical NIC
    up: bool  # IFF_UP: administratively up
    carrier: bool
    master: int | None  # index of the bridge (or bond) it is a port of


def link_info(msg: Any) -> LinkInfo:
    """Convert a pyroute2 link message."""
    return LinkInfo(
        name=str(msg.get("ifname") or msg.get("IFLA_IFNAME") or ""),
        index=int(msg["index"]),
        kind=str(msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""),
        up=bool(msg["flags"] & IFF_UP),
        carrier=msg.get("IFLA_CARRIER") == 1,
        master=msg.get("IFLA_MASTER"),
    )


def problems(
    links: Iterable[LinkInfo],
    needed: Iterable[str],
    networks: Mapping[str, Resolved] | None = None,
) -> dict[str, str]:
    """For each needed interface that does not work: why (see the module docstring).

    A need ``network:NAME`` (a libvirt network) is judged by `networks[NAME]`, what this
    host's libvirtd said of it (its bridge, or why it has none): its bridge must work like a
    named one ("bridge virbr1 absent"); a network missing from `networks` does not work."""
    by_name = {link.name: link for link in links}
    ports: dict[int, list[LinkInfo]] = {}
    for port in by_name.values():
        if port.master is not None:
            ports.setdefault(port.master, []).append(port)
    out: dict[str, str] = {}
    for name in needed:
        network = libvirt_network(name)
        if network is None:
            why = _link_problem(by_name.get(name), ports)
        else:
            bridge, why = (networks or {}).get(network, (None, "not resolved"))
            if bridge is not None:
                why = _link_problem(by_name.get(bridge), ports)
                why = f"bridge {bridge} {why}" if why else ""
        if why:
            out[name] = why
    return out


def _link_problem(link: LinkInfo | None, ports: Mapping[int, list[LinkInfo]]) -> str:
    if link is None:
        return "absent"
    if not link.up:
        return "down"
    if link.kind == "bridge":
        uplinks = [p for p in ports.get(link.index, []) if p.kind not in _GUEST_PORT_KINDS]
        if uplinks and not any(p.up and p.carrier for p in uplinks):
            return f"no carrier on its ports ({', '.join(sorted(p.name for p in uplinks))})"
        return ""
    return "" if link.carrier else "no carrier"


def check_links(needed: Iterable[str], resolve: Resolver | None = None) -> dict[str, str]:
    """`problems` for this network namespace's links now. Blocking (one netlink dump, and
    `resolve` for the libvirt networks among `needed`): run it off the event loop. Raises
    NetlinkError when the links cannot be listed (or `resolve` cannot ask libvirt)."""
    needed = tuple(needed)
    names = [n for n in map(libvirt_network, needed) if n is not None]
    networks = resolve(names) if names and resolve is not None else {}
    try:
        with IPRoute() as ipr:
            links = [link_info(m) for m in ipr.get_links()]
    except (OSError, Pyroute2NetlinkError) as exc:
        # An operating error (netlink refused or failed the dump), not a bug: the caller
        # treats the condition as unknown and tries again.
        raise NetlinkError(f"cannot list links: {exc}") from exc
    return problems(links, needed, networks)


class LinkWatcher:
    """Calls `on_change` (in the loop thread) whenever a link message arrives."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.events = 0  # link messages seen (telemetry, tests)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            sock.setblocking(False)
            sock.bind((0, RTMGRP_LINK))
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        seen = 0
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    seen += 1  # the kernel dropped messages: something changed, re-check all
                    continue
                # Never a busy loop on a broken socket: stop watching (the periodic check
                # goes on) and ask for one more check now.
                log.warning("netlink link watcher stopped: %s", exc)
                self.close()
                self._on_change()
                return
            if not data:
                break
            seen += 1
        if seen:
            self.events += seen
            self._on_change()

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


def summary(found: Mapping[str, str]) -> str:
    """ "br-backend absent, eth1 no carrier" (sorted; '' when nothing is wrong)."""
    return ", ".join(f"{n} {why}" for n, why in sorted(found.items()))
