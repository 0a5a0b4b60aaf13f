"""The 10th-floor test (issue 8 item 3): a host falls out of a window together with its BMC.

Real processes: three `haagent run` agents (real Raft, libvirt's in-process test driver, so a
SIGKILL of an agent is a power loss of its hypervisor), one real `ipmi_sim` per node driven by
the stock `fence_ipmilan`. The owner's agent and its `ipmi_sim` are SIGKILLed together, so
every power fence fails ("Connection timed out") for as long as the test runs.

(a) With a watchdog level (`fence = [["fence-n1"], "watchdog"]`; the stand-in watchdog, opted
    into as a lab must), the guest runs again on a survivor once lease + the watchdog timeout
    the node committed + margin have passed since its last heartbeat, plus a start; never
    before that deadline.
(b) Without one it stays put, well past that bound, and the real CLI's
    `haagent node confirm-fenced` (an admin who verified that the host is off) moves it.

A `ClusterWatch` samples every agent for the whole test: never two copies, each hypervisor runs
only what its committed view gives it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

import pytest

from haagent.localcluster.cluster import ClusterPlan, LocalCluster, local_plan, wait_for
from haagent.timing import FAST_TIMING
from tests.helpers.cluster_watch import ClusterWatch
from tests.integration.test_cluster_failover import (
    check_common,
    collect,
    guest_of,
    one_guest_per_node,
    running_elsewhere,
    settled,
)

pytestmark = pytest.mark.integration

StartWatched = Callable[[ClusterPlan], tuple[LocalCluster, ClusterWatch]]

WATCHDOG_S = 3.0  # the nodes' (stand-in) watchdog timeout
# One ipmitool call may take this long: with fence_ipmilan's default (20 s) a pass against a
# dead BMC takes 20 s to fail, and the watchdog level waits for one failed pass.
IPMI_POWER_TIMEOUT_S = 2
TIMING = FAST_TIMING
DEADLINE_S = TIMING.lease_s + WATCHDOG_S + TIMING.watchdog_margin_s
# A start on a survivor after the deadline: commit the fence, assign, commit the start, start
# the domain, and this test's 100 ms sampling; generous for a loaded 2-core machine.
START_ALLOWANCE_S = 3.0
# The deadline counts from when the leader last applied the victim's heartbeat, which is a
# heartbeat period plus a commit before the kill, more under load (but the victim would have
# lost its lease if none had committed for lease_s). The exact check is on the leader's own
# clock: the silence its watchdog verdict states.
EARLY_SLACK_S = TIMING.lease_s
SILENCE = re.compile(r"watchdog deadline passed \(([0-9.]+)s since last heartbeat")


def tenth_floor_plan(fence: str) -> ClusterPlan:
    plan = local_plan(3, fence=fence, guests=one_guest_per_node(3))
    timing = {k: float(v) for k, v in asdict(TIMING).items()}
    return ClusterPlan(
        plan.nodes,
        plan.guests,
        timing=timing,
        watchdog_timeout_s=WATCHDOG_S,
        ipmi_power_timeout_s=IPMI_POWER_TIMEOUT_S,
    )


def haagent_cli(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haagent", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def throw_out_of_the_window(cluster: LocalCluster, victim: str) -> tuple[float, float]:
    """SIGKILL the victim's agent and its BMC together; (monotonic, wall) time of the kill."""
    t_kill, wall_kill = time.monotonic(), time.time()
    cluster.signal_agent(victim, signal.SIGKILL)
    cluster.kill_bmc(victim)
    return t_kill, wall_kill


def victim_view(cluster: LocalCluster, node: str, victim: str) -> dict[str, object]:
    doc = cluster.status(node, timeout_s=2.0)
    view: dict[str, object] = doc["nodes"][victim]
    return view


@pytest.mark.parametrize("victim_is_leader", [False, True], ids=["follower", "leader"])
def test_watchdog_level_recovers_a_host_that_died_with_its_bmc(
    start_watched: StartWatched, victim_is_leader: bool
) -> None:
    cluster, watch = start_watched(tenth_floor_plan("ipmi+watchdog"))
    doc = settled(cluster)
    leader = doc["leader"]
    # A dead leader: the new one counts the deadline from its own apply of the victim's last
    # heartbeat (as a follower), never from an election.
    victim = leader if victim_is_leader else min(n for n in cluster.nodes() if n != leader)
    guest = guest_of(doc, victim)
    gen0 = doc["guests"][guest]["generation"]
    survivors = [n for n in cluster.nodes() if n != victim]
    # Every node committed the watchdog timeout it armed (the stand-in reports its own).
    assert {n: v["watchdog_timeout_s"] for n, v in doc["nodes"].items()} == {
        n: WATCHDOG_S for n in cluster.nodes()
    }

    t_kill, _ = throw_out_of_the_window(cluster, victim)
    first = wait_for(
        f"{guest} running on a survivor",
        running_elsewhere(watch, guest, survivors, t_kill),
        DEADLINE_S + START_ALLOWANCE_S + 10.0,
    )
    elapsed = first.t1 - t_kill
    collect(watch, survivors, 5)
    watch.stop()
    print(
        f"\n{guest} ran again on {first.node} {elapsed:.2f}s after its host and BMC died "
        f"(deadline lease {TIMING.lease_s:g} + watchdog {WATCHDOG_S:g} + margin "
        f"{TIMING.watchdog_margin_s:g} = {DEADLINE_S:g}s)"
    )

    check_common(watch)
    assert watch.assert_moved_only_after_fence(guest, victim, gen0) > 0
    # Never before the watchdog deadline, and within it plus a start.
    assert elapsed >= DEADLINE_S - EARLY_SLACK_S, elapsed
    assert elapsed <= DEADLINE_S + START_ALLOWANCE_S, elapsed
    for n in survivors:
        v = victim_view(cluster, n, victim)
        fence = v["fence"]
        assert isinstance(fence, dict)
        assert v["state"] == "fenced" and fence["method"] == "watchdog", v
        assert fence["attempts"] >= 1, v  # the power level was tried first, and failed
        silence = SILENCE.search(str(fence["last_detail"]))
        assert silence and float(silence.group(1)) >= DEADLINE_S, fence


def test_without_a_watchdog_level_it_waits_until_an_admin_confirms(
    start_watched: StartWatched,
) -> None:
    cluster, watch = start_watched(tenth_floor_plan("ipmi"))
    doc = settled(cluster)
    leader = doc["leader"]
    victim = min(n for n in cluster.nodes() if n != leader)
    guest = guest_of(doc, victim)
    gen0 = doc["guests"][guest]["generation"]
    survivors = [n for n in cluster.nodes() if n != victim]
    admin_config = str(cluster.config_path(leader))

    # Confirming a node that is up is refused, with the reason (exit status 1).
    refused = haagent_cli("node", "confirm-fenced", victim, "--config", admin_config)
    assert refused.returncode == 1 and "not failed" in refused.stderr + refused.stdout, refused

    t_kill, _ = throw_out_of_the_window(cluster, victim)
    wait_for(
        f"{victim} declared failed and a fence attempt failed",
        lambda: (
            True
            if (v := victim_view(cluster, leader, victim))["state"] == "failed"
            and isinstance(v["fence"], dict)
            and v["fence"]["last_result"] == "failed"
            else None
        ),
        20.0,
    )
    # Well past the bound a watchdog level would have recovered it in: it stays put.
    hold_until = t_kill + DEADLINE_S + START_ALLOWANCE_S + 2.0
    wait_for("the hold period", lambda: True if time.monotonic() >= hold_until else None, 30.0)
    collect(watch, survivors, 3)
    assert watch.first_running(guest, survivors, t_kill) is None
    held = cluster.status(leader, timeout_s=2.0)
    assert held["nodes"][victim]["state"] == "failed", held["nodes"][victim]
    assert held["guests"][guest]["owner"] == victim, held["guests"][guest]

    t_confirm = time.monotonic()
    confirmed = haagent_cli(
        "node", "confirm-fenced", victim, "--by", "ops-on-site", "--config", admin_config
    )
    assert confirmed.returncode == 0, confirmed
    first = wait_for(
        f"{guest} running on a survivor",
        running_elsewhere(watch, guest, survivors, t_confirm),
        15.0,
    )
    collect(watch, survivors, 5)
    watch.stop()
    print(
        f"\n{guest} held for {t_confirm - t_kill:.2f}s after its host and BMC died; ran again "
        f"on {first.node} {first.t1 - t_confirm:.2f}s after confirm-fenced"
    )

    check_common(watch)
    assert watch.assert_moved_only_after_fence(guest, victim, gen0) > 0
    for n in survivors:
        v = victim_view(cluster, n, victim)
        fence = v["fence"]
        assert isinstance(fence, dict)
        assert v["state"] == "fenced" and fence["method"] == "manual", v
        assert "ops-on-site" in str(fence["last_detail"]), v
    # A second confirmation finds nothing to confirm.
    again = haagent_cli("node", "confirm-fenced", victim, "--config", admin_config)
    assert again.returncode == 1 and "not failed" in again.stderr + again.stdout, again
