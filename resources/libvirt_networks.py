"""Resolve libvirt networks (`<interface type='network'>`) to this host's bridge.

A guest's need ``network:NAME`` (haagent.core.netneeds) is checked on each host as what
libvirt would attach the guest to there: the network NAME must be defined and active in this
host's libvirtd, and its bridge (`virNetwork.bridgeName()`) must then work like any needed
bridge (haagent.resources.netlink). A network that is not a bridge of this host (macvtap,
hostdev and other `<forward>` modes without one) cannot be checked and counts as not working,
with that reason: the agent never reads "unknown" as "fine".

Blocking (one connection and one lookup per network): run it in the network check's worker
thread, never on the loop. libvirt being unreachable is an operating error: the whole check
fails (`LibvirtNetworkError`, a `NetlinkError` so the network observer treats the condition
as unknown and tries again), it never reports every network lost.
"""

from __future__ import annotations

from collections.abc import Iterable

import libvirt

from haagent.resources.netlink import NetlinkError, Resolved


class LibvirtNetworkError(NetlinkError):
    """This host's libvirtd could not be asked (the condition is unknown, not lost)."""


def resolve_networks(uri: str, names: Iterable[str]) -> dict[str, Resolved]:
    """network name -> (its bridge here, "") or (None, why it cannot be used here)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtNetworkError(f"cannot connect to {uri}: {exc}") from None
    try:
        return {name: _resolve(conn, name) for name in wanted}
    finally:
        conn.close()


def _resolve(conn: libvirt.virConnect, name: str) -> Resolved:
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None, "not defined in libvirt"
        raise LibvirtNetworkError(f"cannot look up libvirt network {name!r}: {exc}") from None
    try:
        if not net.isActive():
            return None, "not active in libvirt"
        return net.bridgeName(), ""
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None, "not defined in libvirt"  # undefined between the lookup and now
        # An active network without a bridge (a <forward mode='hostdev'/'passthrough'/...>
        # pool): nothing on this host the agent could check.
        return None, f"has no bridge to check ({exc.get_error_message()})"
