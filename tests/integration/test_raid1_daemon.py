"""Guest RAID1 through the real agents: degraded start after a holder fails, never from a
stale leg alone.

Three real `haagent run` processes: n1 and n2 each manage their own real libvirtd
(tests/helpers/libvirt_host.py, one mount namespace each), n3 is a witness. The guest `r1`
has `storage = "raid1"` with two legs: `lega` held by n1, `legb` held by n2. Each leg is a
real disk of its holder: a loop device over the leg's image (the holder's `local` block
device) that the same image's `nbd-server` exports to the other host (the leg's `remote`
URI). QEMU opens the local leg as a block device and the remote one with its own NBD client.
The guest's payload is SeaBIOS with nothing to boot: this test is about which disks each host
starts it with, not about md (tests/integration/test_real_raid1.py runs md for real).

Fencing is the storage fence, for real: n1's fence device is fence_nbd_leg on n2's nbd-server
(it revokes n1's address and cuts its connections), n2's the same on n1's.

The path:
1. r1 starts on n1 (preferred) with both legs: lega local, legb over NBD;
2. n1 fails: its agent, its libvirtd and QEMU, and its nbd-server are SIGKILLed. n2 fences
   it (storage fence), commits lega stale (LegStale, before the start) and starts r1 from
   legb alone: the running domain on host 2 has legb only;
3. n1 returns (its libvirtd with an empty /run as after a reboot, its nbd-server, its
   agent) and is up again. Without an observation from inside the guest (no guest agent
   here) n2 neither re-attaches lega nor commits it fresh: nothing on a guess (the re-attach,
   resync and LegFresh need the md guest of test_real_raid1.py; not run through the agents
   yet);
4. n2 fails the same way. n1 fences it, and r1 does not start on n1: its only reachable leg
   (lega, its own) is stale; the status shows lega stale with the reason and legb fresh, and
   the leader's log says why the guest waits. n1's old persistent definition (both legs, from
   step 1) is never started.

A `DomainWatch` samples r1 on both hosts every 100 ms throughout: it must never run on two.
Everything (agents, libvirtds, QEMUs, nbd-servers, loop devices, temp folders) is stopped
and removed even on failure.
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
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt
import pytest

from haagent.localcluster.cluster import (
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

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FENCE_AGENT = REPO / "resources" / "fence_nbd_leg.py"
GUEST = "r1"
LEG_MIB = 16
START_TIMEOUT_S = 90.0
STEP_TIMEOUT_S = 60.0

GUEST_XML = f"""<domain type='qemu'>
  <name>{GUEST}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>
"""


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
        for stale in (self.host.dir("run") / "qemu").glob(f"{GUEST}.*"):
            stale.unlink()
        self.host.restart_libvirtd()
        self.nbd.start()


@dataclass
class Lab:
    h1: Holder
    h2: Holder
    base: Path


@pytest.fixture
def lab() -> Iterator[Lab]:
    grant_kvm_to_group()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    # Short: unix socket paths are limited to 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="har1-", dir="/tmp"))
    opened: list[Any] = []
    try:
        holders = []
        for i, leg in ((1, "lega"), (2, "legb")):
            nbd = NbdServer(base, leg, LEG_MIB)
            opened.append(nbd)
            loop = LoopDevice(nbd.image)
            opened.append(loop)
            host = LibvirtHost(base / f"h{i}")
            opened.append(host)
            host.up()
            nbd.start()
            holders.append(Holder(host, nbd, loop))
        yield Lab(holders[0], holders[1], base)
    finally:
        for thing in reversed(opened):
            if isinstance(thing, LibvirtHost):
                thing.down()
            else:
                thing.close()
        shutil.rmtree(base, ignore_errors=True)


def serials(uri: str, inactive: bool = False) -> list[str]:
    conn = libvirt.open(uri)
    try:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        xml = conn.lookupByName(GUEST).XMLDesc(flags)
    finally:
        conn.close()
    return sorted(s.text or "" for s in ET.fromstring(xml).iter("serial"))


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


def test_degraded_start_reattach_and_no_start_from_a_stale_leg(lab: Lab) -> None:
    legs = (
        ("lega", "n1", lab.h1.loop.path, lab.h1.nbd.uri),
        ("legb", "n2", lab.h2.loop.path, lab.h2.nbd.uri),
    )
    plan = local_plan(
        3,
        fence="dummy",
        guests=(GuestPlan(GUEST, 32, 10, ("n1",), xml=GUEST_XML, legs=legs),),
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
    watch = DomainWatch([lab.h1.host.uri, lab.h2.host.uri], GUEST).start()
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        with running_cluster(lab.base / "run", replace(plan, nodes=nodes), START_TIMEOUT_S) as c:
            try:
                scenario(c, lab, watch, timings)
            except BaseException:
                show_logs(c)
                print("states h1 | h2:", *watch.transitions(began), sep="\n    ")
                raise
    finally:
        watch.stop()
    twice = watch.both_running()
    assert twice == [], f"r1 ran on both hosts: {twice[:3]}"
    print("\nstates h1 | h2:", *watch.transitions(began), sep="\n    ")
    print("timings: " + ", ".join(f"{k}={v:.2f}" for k, v in timings.items()))
    print(f"whole test {time.monotonic() - began:.1f} s, {len(watch.samples)} samples")


def guest_doc(cluster: LocalCluster, exclude: tuple[str, ...]) -> dict[str, Any]:
    doc: dict[str, Any] = cluster.any_status(exclude)["guests"][GUEST]
    return doc


def scenario(c: LocalCluster, lab: Lab, watch: DomainWatch, timings: dict[str, float]) -> None:
    # 1. On n1 with both legs.
    first = watch.wait_for(0, "running", STEP_TIMEOUT_S)
    assert serials(lab.h1.host.uri) == ["lega", "legb"]
    g = guest_doc(c, ())
    assert (g["owner"], g["legs"]["lega"]["fresh"], g["legs"]["legb"]["fresh"]) == (
        "n1",
        True,
        True,
    ), g
    generation = g["generation"]
    del first

    # 2. n1 fails; r1 starts on n2 from legb alone, lega committed stale first.
    crashed = time.monotonic()
    c.signal_agent("n1", signal.SIGKILL)
    lab.h1.crash()
    on_h2 = watch.wait_for(1, "running", STEP_TIMEOUT_S)
    timings["n1_crash_to_running_on_h2_s"] = on_h2.at - crashed
    assert serials(lab.h2.host.uri) == ["legb"], "a stale leg reached the degraded start"

    def degraded() -> dict[str, Any] | None:
        g = guest_doc(c, ("n1",))
        ok = g["owner"] == "n2" and g["generation"] > generation and g["state"] == "running"
        return g if ok else None

    g = wait_for("r1 owned and running on n2", degraded, STEP_TIMEOUT_S)
    assert not g["legs"]["lega"]["fresh"] and g["legs"]["legb"]["fresh"], g["legs"]
    seen = events(c, "n2")
    fenced = next(
        e for e in seen if e["type"] == "fence_result" and e["command"].get("node") == "n1"
    )
    assert fenced["command"]["ok"], fenced
    stale = next(
        e
        for e in seen
        if e["type"] == "leg_stale" and e["command"]["leg"] == "lega" and e["command"]["by"] == "n2"
    )
    # Proposed (so committed, as the start waits for the commit) before host 2 ran it.
    assert monotonic_of(stale["at"]) < on_h2.at, (stale, on_h2)
    assert seen.index(fenced) < seen.index(stale)
    # The storage fence really cut n1 off legb: its address is gone from legb's allow list.
    assert "127.0.0.1" not in lab.h2.nbd.allow_file.read_text()
    timings["n1_crash_to_fence_committed_s"] = monotonic_of(fenced["at"]) - crashed

    # 3. n1 returns. Without an observation from inside the guest (no guest agent here) n2
    # neither re-attaches lega nor trusts it on a guess: it stays stale and detached.
    lab.h1.reboot()
    c.start_agent("n1")
    returned = time.monotonic()

    def n1_up() -> dict[str, Any] | None:
        node: dict[str, Any] = c.status("n2")["nodes"]["n1"]
        return node if node["state"] == "up" else None

    wait_for("n1 up again", n1_up, STEP_TIMEOUT_S)
    timings["n1_return_to_up_s"] = time.monotonic() - returned
    settle = time.monotonic() + 3.0
    while time.monotonic() < settle:
        assert serials(lab.h2.host.uri) == ["legb"]
        latest = watch.latest()
        assert latest is not None and not latest.states[0].startswith("running"), latest
        time.sleep(0.2)
    g = guest_doc(c, ())
    assert not g["legs"]["lega"]["fresh"], "lega committed fresh without evidence"

    # 4. n2 fails: n1 fences it, and r1 must not start from lega (stale) alone.
    crashed = time.monotonic()
    c.signal_agent("n2", signal.SIGKILL)
    lab.h2.crash()

    def n2_fenced() -> dict[str, Any] | None:
        for e in events(c, "n1"):
            cmd = e["command"]
            fence = e["type"] == "fence_result" and cmd.get("node") == "n2" and cmd.get("ok")
            if fence and monotonic_of(e["at"]) > crashed:
                return e
        return None

    wait_for("n2 fenced", n2_fenced, STEP_TIMEOUT_S)
    timings["n2_crash_to_fence_committed_s"] = time.monotonic() - crashed

    def waits_with_reason() -> str | None:
        # The leader (n1 or the witness n3) logs why it cannot place r1.
        for node in ("n1", "n3"):
            log = c.log_file(node).read_text(errors="replace").splitlines()
            line = next((x for x in log if "only leg lega (stale) reachable" in x), None)
            if line is not None:
                return line
        return None

    why = wait_for("the reason r1 waits, in the leader's log", waits_with_reason, STEP_TIMEOUT_S)
    print(f"\nn1 says: {why.strip()[-160:]}")
    # Give it time to do the wrong thing: several reconcile passes.
    settle = time.monotonic() + 5.0
    while time.monotonic() < settle:
        latest = watch.latest()
        assert latest is not None and not latest.states[0].startswith("running"), latest
        time.sleep(0.2)
    g = guest_doc(c, ("n2",))
    assert g["state"] != "running" or g["owner"] == "n2", g
    assert not g["legs"]["lega"]["fresh"] and g["legs"]["lega"]["stale_reason"], g["legs"]
    assert g["legs"]["legb"]["fresh"], g["legs"]
    # Host 1 still keeps the definition of step 1 (both legs): it was never started.
    assert serials(lab.h1.host.uri, inactive=True) == ["lega", "legb"]
    print(f"r1 after n2 failed: state {g['state']}, owner {g['owner']}, legs {g['legs']}")
