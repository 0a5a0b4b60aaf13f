"""The scale benchmark's shorter form: real agents come up, stay steady, and fail over.

`benchmarks/scale_real.py` at one size, shortened for CI (haagent.localcluster.scale measures
both the same way): AGENTS real `haagent run` processes with 5 guests each (libvirt's test
driver, fence_dummy, real pysyncobj on loopback, the default timing profile), all on this
machine's 2 shared cores. The test checks outcomes, not speed, except where a bound is a
promise of the README:

* every guest runs within UP_BOUND_S of the first agent's start;
* for STEADY_S of idling, no status sample without a lease, no self-fence, no node declared
  failed, no fence, no Raft term change — on a healthy cluster every one of them is false;
* SIGKILL of the follower owning the most guests (a power loss of its hypervisor): each of its
  guests runs on a survivor within FAILOVER_BOUND_S;
* throughout, a `ClusterWatch` (every agent's status each second) sees no guest on two nodes
  and no node running a guest it does not own, and none of the victim's guests moved before
  the victim's fence was committed.

Why 6 agents and not 22 or 12 (issue 7 asks for 22 if it fits, else 12): on this machine's
2 cores, shared with other sessions' tests, neither is deterministic (README "How large a
cluster", measured on 2026-12-04). With the robust profile's 1.0 s heartbeat, 12 agents / 60
guests came up in 19 s at load 39, but in 132 s once and not within 180 s once at load ~44;
with the former 0.2 s heartbeat they failed four times at load 19-35. 22 agents never came up.
The cause is the Raft leader, not the loop: every log entry goes to every follower in a
message of its own, and under fair scheduling the leader gets no more CPU than any other
agent. 6 agents / 30 guests passed four times at load 30-38. Raise AGENTS once the leader's
cost per entry no longer grows with the cluster.
The figures go to $TMPDIR/haagent_scale_report.txt.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from haagent.localcluster.cluster import ClusterPlan, LocalCluster
from haagent.localcluster.scale import idle_window, kill_owner, scale_plan, start_cluster
from tests.helpers.cluster_watch import ClusterWatch

pytestmark = pytest.mark.integration

AGENTS = 6
GUESTS = 5 * AGENTS
STEADY_S = 20.0
UP_BOUND_S = 60.0  # issue 7's target for every size
FAILOVER_BOUND_S = 30.0  # robust profile: failure timeout 4 s, fence, restart; a wide margin


def test_real_agents_come_up_stay_steady_and_fail_over(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    api_dir = tmp_path / "api"
    api_dir.mkdir()
    plan: ClusterPlan = scale_plan(AGENTS, GUESTS, api_dir)
    cluster = make_cluster(plan, start=False)
    with ClusterWatch(cluster, interval_s=1.0, request_timeout_s=5.0) as watch:
        running_s, leases_s = start_cluster(cluster, timeout_s=3 * UP_BOUND_S)
        idle = idle_window(cluster, STEADY_S)
        failover = kill_owner(cluster, timeout_s=3 * FAILOVER_BOUND_S)
    report = (
        f"{AGENTS} agents / {GUESTS} guests on {os.cpu_count()} cores: up {running_s:.1f} s "
        f"(leases {leases_s:.1f} s); idle {idle.seconds:.0f} s: lease-loss samples "
        f"{idle.lease_loss_samples}/{idle.samples}, self-fences {idle.self_fences}, declared "
        f"failed {idle.declared_failed}, fences {idle.fences}, term changes "
        f"{idle.term_changes}, CPU sum {sum(idle.cpu_percent.values()):.0f} %, pass p50 "
        f"{idle.pass_p50_s * 1000:.1f} ms p99 {idle.pass_p99_s * 1000:.1f} ms; load "
        f"{idle.load_after[0]:.1f}; SIGKILL {failover.victim} ({failover.guests} guests): "
        f"median {failover.median_guest_s:.2f} s, all {failover.all_running_s:.2f} s\n"
    )
    Path(tempfile.gettempdir(), "haagent_scale_report.txt").write_text(report)
    print(report)
    assert running_s < UP_BOUND_S, report
    assert idle.lease_loss_samples == 0, (idle.lease_loss_reasons, report)
    assert idle.self_fences == 0, report
    assert idle.declared_failed == 0, report
    assert idle.fences == 0, report
    assert idle.term_changes == 0, report
    assert failover.all_running_s < FAILOVER_BOUND_S, report
    watch.assert_single_copy()
    watch.assert_runs_only_what_it_owns()
    for guest, generation in failover.generations.items():
        watch.assert_moved_only_after_fence(guest, failover.victim, generation)
