"""Two raid1 leg holders on one machine, for tests of real agents with raid1 guests.

Host i (1 or 2) is a `Holder`: its own libvirtd (tests/helpers/libvirt_host.py, one mount
namespace) and its leg: a loop device over the leg's image (the holder's `local` block device)
that an `nbd-server` exports to the other host (the leg's `remote` URI, nbd://127.0.0.1:PORT).
Host 1 holds `lega`, host 2 `legb`. `raid1_plan` makes the three-agent plan (n1, n2 on the two
libvirtds, n3 a witness) whose fencing is the storage fence for real: n1's fence device is
fence_nbd_leg on host 2's nbd-server (it revokes n1's address and cuts its connections), n2's
the same on host 1's.

`raid1_lab()` stops and removes everything it started (libvirtds and their QEMUs, nbd-servers,
loop devices, the temp folder) even on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt

from haagent.localcluster.cluster import (
    ClusterPlan,
    GuestPlan,
    LocalCluster,
    http_get_json,
    local_plan,
    running_cluster,
    wait_for,
)
from tests.helpers.libvirt_host import LibvirtHost, grant_kvm_to_group
from tests.helpers.migration_watch import DomainWatch
from tests.helpers.raid1_guest import NbdServer

REPO = Path(__file__).resolve().parents[2]
FENCE_AGENT = REPO / "resources" / "fence_nbd_leg.py"


class LoopDevice:
    """A loop device over a file: the holder's own block device for its leg."""

    def __init__(self, image: Path) -> None:
        done = subprocess.run(
            ["losetup", "--find", "--show", str(image)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.path = done.stdout.strip()

    def close(self) -> None:
        subprocess.run(["losetup", "-d", self.path], check=False, capture_output=True, timeout=30)


@dataclass
class Holder:
    """One hypervisor "host": its libvirtd, and its leg (loop device + nbd-server)."""

    host: LibvirtHost
    nbd: NbdServer
    loop: LoopDevice
    guest: str

    def crash(self) -> None:
        """Power loss as far as its guests and its leg export are concerned."""
        pids = [self.host.libvirtd_pid(), *self.host.qemu_pids().values()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nbd.kill()
        wait_for("the host's processes to die", lambda: None if self._any_alive(pids) else True, 10)

    @staticmethod
    def _any_alive(pids: list[int]) -> bool:
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                return True
        return False

    def reboot(self) -> None:
        """Back after a reboot: /run is empty (libvirt's runtime state of the dead guest is
        gone, so the new libvirtd does not try to reconnect to it), then libvirtd and the
        leg export start again."""
        for stale in (self.host.dir("run") / "qemu").glob(f"{self.guest}.*"):
            stale.unlink()
        self.host.restart_libvirtd()
        self.nbd.start()


@dataclass
class Lab:
    h1: Holder
    h2: Holder
    base: Path


@contextlib.contextmanager
def raid1_lab(guest: str, leg_mib: int) -> Iterator[Lab]:
    """Both holders up, for the guest named `guest` (see the module docstring)."""
    grant_kvm_to_group()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    # Short: unix socket paths are limited to 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="har1-", dir="/tmp"))
    opened: list[Any] = []
    try:
        holders = []
        for i, leg in ((1, "lega"), (2, "legb")):
            nbd = NbdServer(base, leg, leg_mib)
            opened.append(nbd)
            loop = LoopDevice(nbd.image)
            opened.append(loop)
            host = LibvirtHost(base / f"h{i}")
            opened.append(host)
            host.up()
            nbd.start()
            holders.append(Holder(host, nbd, loop, guest))
        yield Lab(holders[0], holders[1], base)
    finally:
        for thing in reversed(opened):
            if isinstance(thing, LibvirtHost):
                thing.down()
            else:
                thing.close()
        shutil.rmtree(base, ignore_errors=True)


def raid1_plan(lab: Lab, guest: str, memory_mib: int, xml: str) -> ClusterPlan:
    """n1 and n2 on the holders' libvirtds with storage fences, n3 a witness; the raid1 guest
    preferred on n1."""
    legs = (
        ("lega", "n1", lab.h1.loop.path, lab.h1.nbd.uri),
        ("legb", "n2", lab.h2.loop.path, lab.h2.nbd.uri),
    )
    plan = local_plan(
        3,
        fence="dummy",
        guests=(GuestPlan(guest, memory_mib, 10, ("n1",), xml=xml, legs=legs),),
        witness=True,
    )

    def fence_of(i: int) -> tuple[tuple[str, str], ...]:
        # n_i is cut off the leg the *other* host holds and exports.
        other = lab.h2 if i == 1 else lab.h1
        return (
            ("allow_file", str(other.nbd.allow_file)),
            ("address", "127.0.0.1"),
            ("server_pid_file", str(other.nbd.pid_file)),
        )

    holders = {1: lab.h1, 2: lab.h2}
    nodes = tuple(
        replace(
            n,
            libvirt_uri=holders[i].host.uri,
            fence="agent",
            fence_agent=str(FENCE_AGENT),
            fence_params=fence_of(i),
        )
        if n.role == "hypervisor"
        else n
        for i, n in enumerate(plan.nodes, 1)
    )
    return replace(plan, nodes=nodes)


def serials(uri: str, guest: str, inactive: bool = False) -> list[str]:
    """The disk serials (leg ids) of the guest's live (or stored) definition."""
    conn = libvirt.open(uri)
    try:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        xml = conn.lookupByName(guest).XMLDesc(flags)
    finally:
        conn.close()
    return sorted(s.text or "" for s in ET.fromstring(xml).iterfind("./devices/disk/serial"))


def events(cluster: LocalCluster, node: str) -> list[dict[str, Any]]:
    doc = http_get_json(
        cluster.api_listen(node), "/v1/events?since=0&limit=1000", cluster.token(node)
    )
    return list(doc["events"])


def monotonic_of(wall: float) -> float:
    return wall - (time.time() - time.monotonic())


def show_logs(cluster: LocalCluster, lines: int = 80) -> None:
    for node in cluster.nodes():
        tail = cluster.log_file(node).read_text(errors="replace").splitlines()[-lines:]
        print(f"--- {node}'s log (last {len(tail)} lines)", *tail, sep="\n")


def guest_doc(cluster: LocalCluster, guest: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    doc: dict[str, Any] = cluster.any_status(exclude)["guests"][guest]
    return doc


Scenario = Callable[[LocalCluster, DomainWatch, dict[str, float]], None]


def run_watched(lab: Lab, plan: ClusterPlan, guest: str, timeout_s: float, body: Scenario) -> None:
    """Run `body(cluster, watch, timings)` with the agents of `plan` up and `guest` sampled on
    both hosts every 100 ms; on failure print the agents' logs and the states seen. Asserts
    that no sample showed the guest running on both hosts; prints the timings."""
    watch = DomainWatch([lab.h1.host.uri, lab.h2.host.uri], guest).start()
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        with running_cluster(lab.base / "run", plan, timeout_s) as cluster:
            try:
                body(cluster, watch, timings)
            except BaseException:
                show_logs(cluster)
                print("states h1 | h2:", *watch.transitions(began), sep="\n    ")
                raise
    finally:
        watch.stop()
    twice = watch.both_running()
    assert twice == [], f"{guest} ran on both hosts: {twice[:3]}"
    print("\nstates h1 | h2:", *watch.transitions(began), sep="\n    ")
    print("timings: " + ", ".join(f"{k}={v:.2f}" for k, v in timings.items()))
    print(f"whole test {time.monotonic() - began:.1f} s, {len(watch.samples)} samples")
