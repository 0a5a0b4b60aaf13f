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

Why 12 agents (issue 7 asks for 22 if it fits the CI budget, else 12): with the leader's
appends coalesced (one per follower per drained burst instead of one per entry) and joiners no
longer taken for stale replicas, 12 agents / 60 guests passed this test 4 times out of 4 at load
7-36 on this machine's 2 shared cores (2026-12-04), each run 36-42 s, up in 7-10 s, every idle
window clean. Before, 12 agents were not deterministic here (once 132 s, once not within
180 s at load ~44) and CI ran 6. 22 agents / 110 guests now come up too (README "How large a
cluster": 14 s, no lease lost, at load 11-28), but a run takes about twice as long, and a
start-up measured before the tolerated-count change lost one node's lease: too few runs yet
to rely on in CI.
Each wait is bounded so that a bad run fails rather than hangs: UP_BOUND_S + 15 s for every
guest to run (the stamp on its GuestRunning decides the UP_BOUND_S promise; polling may see it
later) and as long again for every lease, 2 x FAILOVER_BOUND_S for the failover.
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

AGENTS = 12
GUESTS = 5 * AGENTS
STEADY_S = 20.0
UP_BOUND_S = 60.0  # issue 7's target for every size
FAILOVER_BOUND_S = 30.0  # default profile: failure timeout 1.6 s, fence, restart; a wide margin


def test_real_agents_come_up_stay_steady_and_fail_over(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    api_dir = tmp_path / "api"
    api_dir.mkdir()
    plan: ClusterPlan = scale_plan(AGENTS, GUESTS, api_dir)
    cluster = make_cluster(plan, start=False)
    with ClusterWatch(cluster, interval_s=1.0, request_timeout_s=5.0) as watch:
        running_s, leases_s = start_cluster(cluster, timeout_s=UP_BOUND_S + 15)
        idle = idle_window(cluster, STEADY_S)
        failover = kill_owner(cluster, timeout_s=2 * FAILOVER_BOUND_S)
    report = (
        f"{AGENTS} agents / {GUESTS} guests on {os.cpu_count()} cores: up {running_s:.1f} s "
        f"(leases {leases_s:.1f} s, self-fences while coming up {idle.startup_self_fences}); "
        f"idle {idle.seconds:.0f} s: lease-loss samples "
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
