"""Elections, replica lag, late renewals and self-fence reasons in the status and metrics."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from haagent.agent import LocalView
from haagent.daemon.raft_metrics import RaftEventMetrics
from haagent.daemon.telemetry import ClusterCollector, Snapshot
from haagent.model import ClusterState
from haagent.ports import ConsensusView
from haagent.status import REPLICA_LAG_ENTRIES, build_status, format_status, lease_loss_reason


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def view(**kw: object) -> ConsensusView:
    base: dict[str, object] = {"state": ClusterState(), "leader": "n1", "term": 3}
    base.update(kw)
    return ConsensusView(**base)  # type: ignore[arg-type]


def test_replica_lag_is_what_the_leader_committed_and_this_replica_did_not_apply() -> None:
    assert view(commit_index=10, leader_commit_index=40, last_applied=10).replica_lag == 30
    assert view(commit_index=10, leader_commit_index=0, last_applied=10).replica_lag == 0
    assert view(commit_index=12, leader_commit_index=12, last_applied=13).replica_lag == 0


def test_lease_loss_reasons() -> None:
    assert lease_loss_reason(view(incompatible="v9 command")) == "incompatible"
    assert lease_loss_reason(view(leader=None)) == "no_leader"
    lagging = view(leader_commit_index=100 + REPLICA_LAG_ENTRIES + 1, last_applied=100)
    assert lease_loss_reason(lagging) == "replica_lagging"
    assert lease_loss_reason(view(leader_commit_index=100, last_applied=99)) == (
        "heartbeats_not_committing"
    )


def test_status_shows_replica_elections_and_why_there_is_no_lease() -> None:
    v = view(leader_commit_index=500, last_applied=42, commit_index=42, pre_votes=7, elections=1)
    doc = build_status(
        node="n3",
        cluster="c",
        pid=1,
        incarnation="i",
        view=v,
        now=10.0,
        lease_until=9.0,
        loop_age_s=0.0,
        local={},
    )
    assert doc["replica"] == {"applied": 42, "leader_commit": 500, "lag": 458}
    assert doc["elections"] == {"pre_votes": 7, "elections": 1, "pre_votes_refused": 0}
    assert doc["lease_lost_reason"] == "replica_lagging"
    text = format_status(doc)
    assert "NO LEASE: replica_lagging" in text and "REPLICA LAGGING: applied 42 of 500" in text
    doc = build_status(
        node="n3",
        cluster="c",
        pid=1,
        incarnation="i",
        view=v,
        now=10.0,
        lease_until=11.0,
        loop_age_s=0.0,
        local={},
    )
    assert doc["quorum"] and doc["lease_lost_reason"] is None


def test_metrics_count_elections_terms_late_renewals_and_self_fences() -> None:
    r = CollectorRegistry()
    m = RaftEventMetrics(r)
    m.observe(view(term=3), 0.0, 0.0)  # start-up: no lease yet, not a self-fence
    m.renewed(1.0, -math.inf, 4.0)  # the first lease: not a renewal
    m.observe(view(term=3, pre_votes=2, pre_votes_refused=1), 1.0, 4.0)
    m.renewed(1.2, 4.0, 4.2)  # on time: 2.8 s left
    m.observe(view(term=5, pre_votes=3, elections=1), 1.2, 4.2)
    assert value(r, "haagent_raft_pre_votes_total") == 3
    assert value(r, "haagent_raft_elections_total") == 1
    assert value(r, "haagent_raft_pre_votes_refused_total") == 1
    assert value(r, "haagent_raft_term_changes_total") == 2
    assert value(r, "haagent_lease_renewals_late_total") == 0
    assert value(r, "haagent_lease_remaining_at_renewal_seconds_count") == 1
    m.renewed(3.5, 4.2, 6.5)  # 0.7 s of 3 s left: late
    assert value(r, "haagent_lease_renewals_late_total") == 1
    assert value(r, "haagent_lease_remaining_at_renewal_seconds_bucket", le="1.0") == 1
    m.observe(view(term=5, leader=None), 7.0, 6.5)  # lapsed: a self-fence
    m.observe(view(term=5, leader=None), 7.1, 6.5)  # still the same one
    assert value(r, "haagent_self_fences_total", reason="no_leader") == 1
    m.renewed(7.5, 6.5, 10.5)  # renewed after it lapsed: late, 0 s left
    assert value(r, "haagent_lease_renewals_late_total") == 2
    assert value(r, "haagent_lease_remaining_at_renewal_seconds_bucket", le="0.0") == 1


def test_a_renewal_is_measured_when_it_arrives_not_at_the_next_pass() -> None:
    """The daemon runs no pass for a renewal; the next pass may come a heartbeat period later,
    when less of the old lease is left than the renewal found."""
    r = CollectorRegistry()
    m = RaftEventMetrics(r)
    m.renewed(10.0, 10.6, 11.2)  # 0.6 s left when it arrived
    m.observe(view(term=5), 10.4, 11.2)  # the next pass, 0.4 s later: changes nothing
    assert value(r, "haagent_lease_remaining_at_renewal_seconds_bucket", le="0.5") == 0
    assert value(r, "haagent_lease_remaining_at_renewal_seconds_bucket", le="1.0") == 1
    assert value(r, "haagent_lease_renewals_late_total") == 0


def test_replica_lag_is_a_scrape_time_gauge() -> None:
    lagging = view(term=5, leader_commit_index=90, last_applied=10)
    snap = Snapshot(lagging, 7.6, 10.5, LocalView(None, 7.6), frozenset())
    r = CollectorRegistry()
    r.register(ClusterCollector(snap, None, 0.0, 7.6))
    assert value(r, "haagent_replica_lag_entries") == 80
