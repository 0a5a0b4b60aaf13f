"""`haagent check-config --here`: does this host have what the guests that may run on it need?

Run on every hypervisor (the config's `[local] node` says which one it is): a guest that may move
to a host lacking its bridge, its image or its volume would start there "running" and broken,
or not at all, on the day its own host fails. This finds it before (issue 11 part 5).

Checked: each interface the guests' NICs attach to exists, is up and has carrier (pyroute2,
haagent.resources.netlink; for a libvirt network, the bridge this host's libvirtd names); each
file or block disk source exists and is a regular file or a block device
(haagent.core.diskneeds). Network and pool-volume disks are listed as not checked.
Exit status 0 if everything is present, 1 if something is missing.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from haagent.config import Config
from haagent.core.diskneeds import disk_needs
from haagent.timing import SLOW_RETRANSMIT_SAFE_LEASE_S

if TYPE_CHECKING:
    from haagent.resources.netlink import Resolver


class DoctorError(RuntimeError):
    """The check itself could not run (netlink unavailable, an unreadable domain XML)."""


def check_here(cfg: Config, say: Callable[[str], None] = print) -> int:
    """Print what is missing on this host for the guests that may run on it; 1 if anything."""
    return max(
        check_raft_link_here(cfg, say), check_networks_here(cfg, say), check_disks_here(cfg, say)
    )


def check_raft_link_here(cfg: Config, say: Callable[[str], None] = print) -> int:
    """Whether this kernel retransmits Raft's segments quickly enough for the configured lease
    (1 if not: see `raft_link_verdict`)."""
    from haagent.consensus import retransmit_gap

    status, line = raft_link_verdict(cfg.timing.lease_s, retransmit_gap())
    say(line)
    return status


def raft_link_verdict(lease_s: float, gap: str | None) -> tuple[int, str]:
    """1 and why, if the lease is under 3 s and the kernel lacks a short minimum RTO (`gap`
    says why, from `consensus.retransmit_gap`); else 0 and what holds."""
    if gap is None:
        return 0, "  raft link: lost segments are retransmitted within ~20 ms (TCP_RTO_MIN_US)"
    if lease_s >= SLOW_RETRANSMIT_SAFE_LEASE_S:
        return 0, f"  raft link: {gap}; the {lease_s}s lease tolerates it"
    return 1, (
        f"  raft link: {gap}: with a {lease_s}s lease a lossy link can cost healthy nodes "
        "their lease; set sysctl net.ipv4.tcp_rto_min_us=20000 (Linux 6.11+) or `rto_min 20ms` "
        'on the route to the peers (ip route; not detected here), or [timing] profile = "robust"'
    )


def check_networks_here(cfg: Config, say: Callable[[str], None] = print) -> int:
    """This host's interfaces against what the guests that may run on `cfg.node` need."""
    from haagent.daemon.netwatch import needed_here
    from haagent.resources.netlink import NetlinkError, check_links

    specs = [gc.spec for gc in cfg.guests.values()]
    needed = needed_here(cfg.node, specs)
    if not needed:
        say(f"  {cfg.node}: no guest that may run here needs a host network")
        return 0
    try:
        found = check_links(needed, _resolver(cfg, needed))
    except NetlinkError as exc:
        raise DoctorError(f"cannot check this host's networks: {exc}") from None
    for spec in sorted(specs, key=lambda s: s.name):
        bad = [f"{n} {found[n]}" for n in spec.networks if n in found and spec.allows(cfg.node)]
        if bad:
            lacks = ", ".join(bad)
            say(f"  guest {spec.name} may move to {cfg.node} (this host), which lacks {lacks}")
    if not found:
        say(f"  {cfg.node}: all {len(needed)} needed interfaces exist, are up, have carrier")
    return 1 if found else 0


def _resolver(cfg: Config, needed: tuple[str, ...]) -> Resolver | None:
    """Where this host's libvirt networks are resolved (its `[local] libvirt_uri`)."""
    from haagent.core.netneeds import libvirt_network

    if cfg.libvirt_uri is None or not any(libvirt_network(n) for n in needed):
        return None
    from haagent.resources.libvirt_networks import resolve_networks

    return functools.partial(resolve_networks, cfg.libvirt_uri)


def check_disks_here(cfg: Config, say: Callable[[str], None] = print) -> int:
    """Each file/block disk of each guest that may run on `cfg.node` exists here, as the
    right kind of file. Guests without a domain XML in the config are listed (their disks are
    whatever the domain defined in libvirt says, which is not read here)."""
    missing = checked = 0
    for name, gc in sorted(cfg.guests.items()):
        if not gc.spec.allows(cfg.node):
            continue
        try:
            xml = cfg.guest_xml(name)
            if xml is None:
                say(f"  guest {name}: no `xml` in the config, its disks are not checked")
                continue
            needs = disk_needs(xml)
        except (OSError, ValueError) as exc:
            raise DoctorError(
                f"guest {name}: cannot read its disks from {gc.xml_path}: {exc}"
            ) from None
        for need in needs:
            label = f"guest {name} disk {need.target or '?'}"
            if not need.checkable:
                say(f"  {label}: {need.kind} {need.path} (not checked: not a host path)")
                continue
            checked += 1
            problem = _path_problem(need.path, need.kind)
            if problem:
                missing += 1
                say(f"  {label} may move to {cfg.node} (this host), where {need.path} {problem}")
    if checked and not missing:
        say(f"  {cfg.node}: all {checked} file and block disks of its guests are present")
    return 1 if missing else 0


def _path_problem(path: str, kind: str) -> str:
    """'' if `path` is what a `kind` disk needs, else why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be checked ({os.strerror(exc.errno) if exc.errno else exc})"
    if kind == "block" and not stat.S_ISBLK(st.st_mode):
        return "is not a block device"
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return ""
