"""Config drift as real processes (issue 8 item 6): a node restarted with a config file whose
cluster-wide part differs from the other nodes' is refused, runs nothing, leaves Raft, is
declared failed and fenced by the stock `fence_ipmilan` against its `ipmi_sim`, and its guest
runs on a survivor. Checked by the same ClusterWatch as the failover tests (never two copies,
rule 1, rule 4)."""

from __future__ import annotations

import signal
import time

import pytest

from haagent.localcluster.cluster import local_plan, wait_for
from haagent.statemachine import CONFIG_DRIFT
from tests.helpers.cluster_watch import log_lines, power_events
from tests.integration.test_cluster_failover import (
    RECOVERY_TIMEOUT_S,
    StartWatched,
    check_common,
    collect,
    guest_of,
    one_guest_per_node,
    running_elsewhere,
    settled,
)

pytestmark = pytest.mark.integration

TIMING = {"failure_timeout_s": 15.0}
RECOVERY_S = RECOVERY_TIMEOUT_S + TIMING["failure_timeout_s"]


def test_a_node_restarted_with_a_drifted_config_is_fenced_and_its_guest_moves(
    start_watched: StartWatched,
) -> None:
    # A failure timeout long enough for the restarted agent to start and be refused before
    # its old incarnation's silence gets the node fenced, however loaded the machine.
    plan = local_plan(3, fence="ipmi", guests=one_guest_per_node(3), timing=TIMING)
    cluster, watch = start_watched(plan)
    doc = settled(cluster)
    leader = doc["leader"]
    victim = min(n for n in cluster.nodes() if n != leader)
    guest = guest_of(doc, victim)
    gen0 = doc["guests"][guest]["generation"]
    survivors = [n for n in cluster.nodes() if n != victim]

    # The victim's file now gives its guest another priority: a guest-affecting setting the
    # other nodes do not share.
    path = cluster.config_path(victim)
    text = path.read_text()
    assert "priority = 10" in text
    path.write_text(text.replace("priority = 10", "priority = 20", 1))
    t_kill = time.monotonic()
    cluster.signal_agent(victim, signal.SIGKILL)
    new_pid = cluster.start_agent(victim)
    t_started = time.monotonic()
    refused = wait_for(
        f"{victim}'s join refused for its config",
        lambda: log_lines(cluster, victim, r"leaving the Raft cluster: config differs") or None,
        TIMING["failure_timeout_s"],
    )
    t_refused = time.monotonic()
    assert refused

    first = wait_for(
        f"{guest} running on a survivor",
        running_elsewhere(watch, guest, survivors, t_kill),
        RECOVERY_S,
    )

    def fenced() -> bool | None:
        latest = watch.latest_after(leader, first.t0)
        if latest is None or latest.doc is None:
            return None
        return True if latest.doc["nodes"][victim]["state"] == "fenced" else None

    wait_for(f"{victim} fenced in the leader's view", fenced, RECOVERY_TIMEOUT_S)
    collect(watch, survivors, 5)
    watch.stop()
    print(
        f"\n{victim} left Raft {t_refused - t_started:.2f}s after its restart; {guest} ran "
        f"again on {first.node} {first.t1 - t_kill:.2f}s after the kill (failure timeout "
        f"{TIMING['failure_timeout_s']}s)"
    )

    check_common(watch)
    assert watch.assert_moved_only_after_fence(guest, victim, gen0) > 0
    # The restarted agent's join was refused for its config, it left Raft, and it never ran
    # a guest (its own answers, if the watch caught one before the fence, show none and say
    # why it holds no lease).
    assert log_lines(cluster, victim, rf"{CONFIG_DRIFT}"), "no refusal logged"
    assert log_lines(cluster, victim, r"leaving the Raft cluster: config differs")
    said = 0
    for o in watch.answers(victim):
        if o.t0 > t_started and o.doc is not None and o.doc["pid"] == new_pid:
            assert not o.local, o.local
            assert not o.doc["quorum"]
            said += CONFIG_DRIFT in (o.doc["incompatible"] or "")
    print(f"{said} answers of the restarted {victim} reported the drift before its fence")
    assert log_lines(cluster, leader, rf"declare_failed node={victim}\b")
    assert [e for e in power_events(cluster, victim) if e[1].startswith("set power")]
