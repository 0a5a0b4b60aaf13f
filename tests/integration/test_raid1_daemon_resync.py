"""Guest RAID1 through the real agents, the whole path with md running in the guest.

The holders, agents and storage fences of tests/helpers/raid1_hosts.py (n1 holds `lega`, n2
`legb`; n3 a witness), and the RAID1 test guest (TCG, Debian's kernel, md and qemu-guest-agent:
tests/raid1_guest/). The agents observe the guest's array through qemu-guest-agent
(`LibvirtMirrors`), as in production.

1. r1 starts on n1 with both legs; the test creates the md RAID1 over them in the guest and
   writes to it. Both legs stay fresh (an agent that answers before the array is assembled
   is no evidence that a leg is missing).
2. n1 fails (agent, libvirtd + QEMU, its nbd-server SIGKILLed); n2 fences it (storage fence),
   commits lega stale, and starts r1 from legb alone; the guest boots again, its array is
   assembled degraded from legb, and it writes (lega misses those writes).
3. n1 returns: n2 re-attaches lega to the running guest, md recovers it (the guest's
   leg-watch adds it, as udev would), the status shows lega "resyncing" with progress, and
   only once the agent saw it in sync is lega committed fresh (LegFresh, with its evidence).
   md's own check then finds the two halves identical.
A `DomainWatch` samples r1 on both hosts every 100 ms: it never runs on two.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from haagent.localcluster.cluster import LocalCluster, wait_for
from tests.helpers.migration_watch import DomainWatch
from tests.helpers.raid1_guest import Raid1Guest, ensure_image, raid1_domain_xml
from tests.helpers.raid1_hosts import (
    Lab,
    events,
    guest_doc,
    monotonic_of,
    raid1_lab,
    raid1_plan,
    run_watched,
    serials,
)

pytestmark = pytest.mark.integration

GUEST = "r1"
LEG_MIB = 16
MEMORY_MIB = 256
RESYNC_KIBPS = 3000  # 16 MiB in ~5 s: long enough for the agent to see it in progress
START_TIMEOUT_S = 90.0
STEP_TIMEOUT_S = 90.0
WRITE = "dd if=/dev/urandom of=/dev/md0 bs=4k count=64 seek={seek} oflag=direct conv=fsync"


def leg_device(leg: str) -> str:
    """Shell: the guest's device of `leg`, found by its disk serial."""
    find = f'[ "$(cat $b/serial)" = {leg} ] && echo /dev/${{b##*/}}'
    return f"$(for b in /sys/block/vd*; do {find}; done)"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with raid1_lab(GUEST, LEG_MIB) as made:
        yield made


def test_holder_fails_degraded_start_returns_resync_fresh(lab: Lab) -> None:
    image_dir = ensure_image()
    console = lab.base / "console.log"
    plan = raid1_plan(
        lab, GUEST, MEMORY_MIB, raid1_domain_xml(GUEST, image_dir, console, [], "stop")
    )
    run_watched(
        lab,
        plan,
        GUEST,
        START_TIMEOUT_S,
        lambda c, watch, timings: scenario(c, lab, watch, timings),
    )


def legs_on(c: LocalCluster, node: str) -> dict[str, Any]:
    """The guest's legs as `node` (the one running it) reports them, members included."""
    legs: dict[str, Any] = c.status(node)["guests"][GUEST]["legs"]
    return legs


def booted(uri: str, console: Any, timings: dict[str, float], key: str) -> Raid1Guest:
    conn = libvirt.open(uri)
    guest = Raid1Guest(conn, GUEST, console)
    timings[key] = guest.wait_ready()
    return guest


def scenario(c: LocalCluster, lab: Lab, watch: DomainWatch, timings: dict[str, float]) -> None:
    console = lab.base / "console.log"
    # 1. On n1 with both legs; the array is created in the guest.
    watch.wait_for(0, "running", STEP_TIMEOUT_S)
    assert serials(lab.h1.host.uri, GUEST) == ["lega", "legb"]
    guest = booted(lab.h1.host.uri, console, timings, "boot_on_h1_s")
    guest.check(
        "mdadm --create /dev/md0 --level=1 --raid-devices=2 --bitmap=none --assume-clean "
        f"--run {leg_device('lega')} {leg_device('legb')}"
    )
    guest.check(WRITE.format(seek=0))

    def both_in_sync() -> dict[str, Any] | None:
        legs = legs_on(c, "n1")
        ok = all(legs[leg]["member"] == "in_sync" and legs[leg]["fresh"] for leg in legs)
        return legs if ok else None

    wait_for("both legs in sync and fresh on n1", both_in_sync, STEP_TIMEOUT_S)
    generation = guest_doc(c, GUEST)["generation"]
    guest.conn.close()

    # 2. n1 fails; r1 starts on n2 from legb alone, lega committed stale first.
    crashed = time.monotonic()
    c.signal_agent("n1", signal.SIGKILL)
    lab.h1.crash()
    on_h2 = watch.wait_for(1, "running", STEP_TIMEOUT_S)
    timings["n1_crash_to_running_on_h2_s"] = on_h2.at - crashed
    assert serials(lab.h2.host.uri, GUEST) == ["legb"], "a stale leg reached the degraded start"
    seen = events(c, "n2")
    stale = next(
        e
        for e in seen
        if e["type"] == "leg_stale" and e["command"]["leg"] == "lega" and e["command"]["by"] == "n2"
    )
    assert monotonic_of(stale["at"]) < on_h2.at, (stale, on_h2)
    guest = booted(lab.h2.host.uri, console, timings, "boot_on_h2_s")
    guest.check(f"mdadm --assemble --run /dev/md0 {leg_device('legb')}")
    guest.check(f"echo {RESYNC_KIBPS} > /proc/sys/dev/raid/speed_limit_max")
    guest.check(WRITE.format(seek=64))  # lega misses this
    g = guest_doc(c, GUEST, ("n1",))
    assert (g["owner"], g["generation"] > generation) == ("n2", True), g
    assert not g["legs"]["lega"]["fresh"] and g["legs"]["legb"]["fresh"], g["legs"]

    # 3. n1 returns: lega is re-attached, resyncs, and is committed fresh on the evidence.
    lab.h1.reboot()
    c.start_agent("n1")
    returned = time.monotonic()
    progress: list[float] = []

    def fresh_again() -> dict[str, Any] | None:
        legs = legs_on(c, "n2")
        lega = legs["lega"]
        if lega["member"] == "resyncing" and lega["resync_progress"] is not None:
            progress.append(lega["resync_progress"])
        return legs if lega["fresh"] else None

    legs = wait_for("lega fresh again", fresh_again, STEP_TIMEOUT_S, interval_s=0.2)
    timings["n1_return_to_lega_fresh_s"] = time.monotonic() - returned
    assert serials(lab.h2.host.uri, GUEST) == ["lega", "legb"]
    assert legs["lega"]["member"] == "in_sync", legs
    print(f"\nresync progress seen in the status: {[round(p, 3) for p in progress]}")
    assert progress, "the status never showed lega resyncing"
    assert progress == sorted(progress), "resync progress went backwards"
    fresh = next(
        e for e in events(c, "n2") if e["type"] == "leg_fresh" and e["command"]["leg"] == "lega"
    )
    print(f"LegFresh evidence: {fresh['command']['evidence']}")
    # md's own comparison of the halves.
    guest.check(
        "echo 200000 > /proc/sys/dev/raid/speed_limit_max; "
        "echo check > /sys/block/md0/md/sync_action; "
        "while [ $(cat /sys/block/md0/md/sync_action) != idle ]; do sleep 0.2; done",
        STEP_TIMEOUT_S,
    )
    assert guest.check("cat /sys/block/md0/md/mismatch_cnt").strip() == "0"
    guest.conn.close()
