"""The `[guests]` section of the config: each protected guest, its storage and where it may
run. Every problem raises `ConfigError` naming the key (see haagent.config)."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from haagent.config_table import Table, check_name, path_problem
from haagent.core.netneeds import NetNeedsError, needed_interfaces
from haagent.leguri import LegUriError, parse_leg_uri
from haagent.model import GuestSpec, Leg, Raid1RunOn, StorageKind
from haagent.untrusted import UntrustedInputError, read_small_text, show

MAX_XML_BYTES = 1024 * 1024
MAX_MEMORY_MIB = 2**31
MAX_PRIORITY = 1000
# A DRBD resource name as resources/drbd.sh accepts it (never an option, no shell or path
# characters), and short enough for drbd.conf.
DRBD_RESOURCE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}")
# A raid1 leg id: it becomes the leg disk's virtio serial (at most 20 bytes), by which the
# guest tells its legs apart (/dev/disk/by-id/virtio-ID).
LEG_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,19}")


@dataclass(frozen=True)
class GuestConfig:
    spec: GuestSpec
    xml_path: Path | None


def parse_guests(t: Table, hypervisors: Collection[str], base: Path) -> dict[str, GuestConfig]:
    """Every guest of `[guests]`; `hypervisors`: the names of the hypervisor nodes."""
    guests: dict[str, GuestConfig] = {}
    domains: dict[str, str] = {}
    resources: dict[str, str] = {}  # DRBD resource -> guest
    leg_users: dict[str, str] = {}  # a raid1 leg's disk ("holder:local" and remote) -> guest
    for name in list(t.data):
        check_name(t, name, name, "guest name")
        gt = t.table(name)
        domain = gt.string("domain", name)
        if not 0 < len(domain) <= 200 or "/" in domain or not domain.isprintable():
            raise gt.error(
                "domain",
                f"must be a libvirt domain name (1-200 printable characters, no '/'), "
                f"got {show(domain)}",
            )
        if domain in domains:
            raise gt.error(
                "domain", f"{show(domain)} is also the domain of guest {domains[domain]}"
            )
        domains[domain] = name
        memory = gt.integer("memory_mib", minimum=1, maximum=MAX_MEMORY_MIB)
        priority = gt.integer("priority", 0, minimum=-MAX_PRIORITY, maximum=MAX_PRIORITY)
        preferred = gt.names("preferred_nodes")
        allowed = gt.names("allowed_nodes")
        for key, listed in (("preferred_nodes", preferred), ("allowed_nodes", allowed)):
            for n in listed:
                if n not in hypervisors:
                    raise gt.error(key, f"{show(n)} is not a hypervisor in [nodes]")
        if allowed and not set(preferred) <= set(allowed):
            raise gt.error("preferred_nodes", "every preferred node must also be allowed")
        group = gt.string("anti_affinity", "")
        if group:
            check_name(gt, "anti_affinity", group, "anti-affinity group")
        storage_s = gt.string("storage", StorageKind.SHARED.value)
        try:
            storage = StorageKind(storage_s)
        except ValueError:
            raise gt.error(
                "storage",
                f"unsupported storage kind {show(storage_s)} (supported: shared, drbd, raid1)",
            ) from None
        resource, replicas = "", cast(tuple[str, ...], ())
        legs: tuple[Leg, ...] = ()
        run_on = Raid1RunOn.HOLDERS
        if storage is StorageKind.RAID1:
            legs, run_on = _raid1(gt, name, hypervisors, leg_users)
            if run_on is Raid1RunOn.HOLDERS:
                holders = [leg.holder for leg in legs]
                for key, listed in (("preferred_nodes", preferred), ("allowed_nodes", allowed)):
                    for n in listed:
                        if n not in holders:
                            raise gt.error(
                                key,
                                f'{show(n)} holds no leg and raid1_run_on is "holders": '
                                "it cannot run it",
                            )
        else:
            for key in ("legs", "raid1_run_on"):
                if gt.has(key):
                    raise gt.error(key, 'only for storage = "raid1"')
        if storage is StorageKind.DRBD:
            resource, replicas = _drbd(gt, name, hypervisors, resources)
            for key, listed in (("preferred_nodes", preferred), ("allowed_nodes", allowed)):
                for n in listed:
                    if n not in replicas:
                        raise gt.error(
                            key, f"{show(n)} holds no replica (replica_nodes): it cannot run it"
                        )
        else:
            for key in ("resource", "replica_nodes"):
                if gt.has(key):
                    raise gt.error(key, 'only for storage = "drbd"')
        xml_path: Path | None = None
        networks: tuple[str, ...] = ()
        if gt.has("xml"):
            xml_path = gt.path("xml", base)
            try:
                networks = needed_interfaces(read_small_text(xml_path, MAX_XML_BYTES))
            except (UntrustedInputError, NetNeedsError) as exc:
                raise gt.error("xml", str(exc)) from None
        if storage is StorageKind.RAID1 and xml_path is None:
            raise gt.error(
                "xml",
                'missing (required with storage = "raid1": the agent adds the leg disks it '
                "chose for each start to it)",
            )
        gt.done()
        spec = GuestSpec(
            name=name,
            domain=domain,
            memory_mib=memory,
            priority=priority,
            preferred_nodes=preferred,
            allowed_nodes=allowed,
            storage=storage,
            anti_affinity=group,
            replica_nodes=replicas,
            resource=resource,
            networks=networks,
            legs=legs,
            raid1_run_on=run_on,
        )
        guests[name] = GuestConfig(spec, xml_path)
    return guests


def _drbd(
    gt: Table, guest: str, hypervisors: Collection[str], resources: dict[str, str]
) -> tuple[str, tuple[str, ...]]:
    """A DRBD guest's resource name (default: the guest's name) and its two replica hosts.
    One resource serves one guest: the fence-peer handler names only the resource."""
    resource = gt.string("resource", guest)
    if not DRBD_RESOURCE_RE.fullmatch(resource):
        raise gt.error(
            "resource", f"DRBD resource {show(resource)} must match {DRBD_RESOURCE_RE.pattern}"
        )
    if resource in resources:
        raise gt.error(
            "resource", f"{show(resource)} is also the resource of guest {resources[resource]}"
        )
    resources[resource] = guest
    if not gt.has("replica_nodes"):
        raise gt.error("replica_nodes", 'missing (required with storage = "drbd")')
    replicas = gt.names("replica_nodes")
    if len(replicas) != 2 or replicas[0] == replicas[1]:
        raise gt.error(
            "replica_nodes", "must name exactly two different hypervisors (the DRBD peers)"
        )
    for n in replicas:
        if n not in hypervisors:
            raise gt.error("replica_nodes", f"{show(n)} is not a hypervisor in [nodes]")
    return resource, replicas


def _raid1(
    gt: Table, guest: str, hypervisors: Collection[str], users: dict[str, str]
) -> tuple[tuple[Leg, ...], Raid1RunOn]:
    """A raid1 guest's two legs and where it may run. Each leg's disk serves one guest
    (`users`: never two writers on one leg), and the two legs have different holders (a
    mirror whose halves share a host survives nothing that host suffers)."""
    run_on_s = gt.string("raid1_run_on", Raid1RunOn.HOLDERS.value)
    try:
        run_on = Raid1RunOn(run_on_s)
    except ValueError:
        raise gt.error(
            "raid1_run_on", f'must be "holders" or "any", got {show(run_on_s)}'
        ) from None
    raw = gt.raw("legs")
    if raw is None:
        raise gt.error("legs", 'missing (required with storage = "raid1")')
    if not isinstance(raw, list) or len(raw) != 2:
        raise gt.error(
            "legs", "must be a list of exactly two leg tables { id, holder, local, remote }"
        )
    legs: list[Leg] = []
    for i, data in enumerate(raw):
        lt = Table(gt.file, gt.key(f"legs[{i}]"), data)
        leg_id = lt.string("id", required=True)
        if not LEG_ID_RE.fullmatch(leg_id):
            raise lt.error("id", f"leg id {show(leg_id)} must match {LEG_ID_RE.pattern}")
        holder = lt.string("holder", required=True)
        if holder not in hypervisors:
            raise lt.error("holder", f"{show(holder)} is not a hypervisor in [nodes]")
        local = lt.string("local", required=True)
        problem = path_problem(local)
        if problem is None and not local.startswith("/"):
            problem = f"must be an absolute path (the holder's block device), got {show(local)}"
        if problem:
            raise lt.error("local", problem)
        remote = lt.string("remote", required=True)
        try:
            parse_leg_uri(remote)
        except LegUriError as exc:
            raise lt.error("remote", f"{exc} (got {show(remote)})") from None
        lt.done()
        for key, disk in (("local", f"{holder}:{local}"), ("remote", remote)):
            other = users.get(disk)
            if other is not None:
                raise lt.error(key, f"{show(disk)} is also a leg of guest {other}")
        legs.append(Leg(leg_id, holder, local, remote))
    a, b = legs
    if a.id == b.id:
        raise gt.error("legs", f"the two legs have the same id {show(a.id)}")
    if a.holder == b.holder:
        raise gt.error(
            "legs", f"both legs are held by {a.holder}: they must be held by two hypervisors"
        )
    if a.remote == b.remote:
        raise gt.error("legs", f"the two legs have the same remote {show(a.remote)}")
    for leg in legs:
        users[f"{leg.holder}:{leg.local}"] = guest
        users[leg.remote] = guest
    return (a, b), run_on
