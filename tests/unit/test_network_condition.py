"""`NetworkCondition` in the state machine and in the placement gate of `AssignGuests`."""

from __future__ import annotations

from haagent.commands import (
    MAX_MISSING_NETWORKS,
    AssignGuests,
    Assignment,
    DefineGuest,
    NetworkCondition,
    decode,
)
from haagent.model import GuestSpec, NodeState
from tests.helpers.core_views import cluster, run

SPEC = GuestSpec("g", "g", 256, networks=("br-backend", "eth0.100"))


def test_recorded_sorted_only_from_the_current_incarnation_of_an_up_node() -> None:
    state = cluster("n1", "n2")
    seq = state.node("n1").heartbeat_seq
    state, (ok, stale, unknown) = run(
        state,
        NetworkCondition("n1", "n1-1", ("eth0.100", "br-backend"), 1.0),
        NetworkCondition("n1", "n1-0", (), 2.0),
        NetworkCondition("n9", "n9-1", ("br0",), 2.0),
    )
    assert ok.accepted and not stale.accepted and not unknown.accepted
    assert state.node("n1").missing_networks == ("br-backend", "eth0.100")
    assert state.node("n9").state is NodeState.DOWN
    # A network condition never touches liveness: no heartbeat, no lease.
    assert state.node("n1").heartbeat_seq == seq
    state, (same, healed) = run(
        state,
        NetworkCondition("n1", "n1-1", ("br-backend", "eth0.100"), 3.0),
        NetworkCondition("n1", "n1-1", (), 4.0),
    )
    assert same.detail == "unchanged" and healed.accepted
    assert state.node("n1").missing_networks == ()


def test_a_list_longer_than_the_bound_is_refused() -> None:
    state = cluster("n1")
    names = tuple(f"br{i}" for i in range(MAX_MISSING_NETWORKS + 1))
    state, (r,) = run(state, NetworkCondition("n1", "n1-1", names, 1.0))
    assert not r.accepted and "at most" in r.detail
    assert state.node("n1").missing_networks == ()


def test_assignment_to_a_node_lacking_a_network_is_refused_with_the_name() -> None:
    state = cluster("n1", "n2")
    state, _ = run(
        state,
        DefineGuest(SPEC, 0.0),
        NetworkCondition("n1", "n1-1", ("br-backend", "other"), 1.0),
    )
    state, (r,) = run(state, AssignGuests((Assignment("g", "n1", 0),), "placed", 2.0))
    assert not r.accepted and "n1 lacks br-backend" in r.detail
    state, (r,) = run(state, AssignGuests((Assignment("g", "n2", 0),), "placed", 2.0))
    assert r.accepted and state.guests["g"].owner == "n2"


def test_lacks_lists_only_the_guests_networks() -> None:
    state = cluster("n1")
    state, _ = run(state, NetworkCondition("n1", "n1-1", ("eth0.100", "unused"), 1.0))
    assert state.node("n1").lacks(SPEC) == ("eth0.100",)
    assert state.node("n1").lacks(GuestSpec("h", "h", 1)) == ()


def test_a_spec_written_before_networks_decodes_with_none() -> None:
    old = (
        b'{"v":1,"type":"define_guest","at":1.0,"expect_version":0,"spec":{"name":"g",'
        b'"domain":"g","memory_mib":1,"priority":0,"preferred_nodes":[],"allowed_nodes":[],'
        b'"storage":"shared","anti_affinity":"","replica_nodes":[],"resource":""}}'
    )
    command = decode(old)
    assert isinstance(command, DefineGuest) and command.spec.networks == ()


def test_status_shows_what_each_node_lacks_and_why_a_guest_cannot_go_there() -> None:
    from haagent.ports import ConsensusView
    from haagent.status import build_status, format_status

    state = cluster("n1", "n2", "n3")
    state, _ = run(
        state,
        DefineGuest(SPEC, 0.0),
        DefineGuest(GuestSpec("h", "h", 1), 0.0),
        NetworkCondition("n1", "n1-1", ("br-backend",), 1.0),
        NetworkCondition("n3", "n3-1", ("br-backend", "eth0.100"), 1.0),
    )
    doc = build_status(
        node="n2",
        cluster="c",
        pid=1,
        incarnation="n2-1",
        view=ConsensusView(state=state, leader="n1"),
        now=1.0,
        lease_until=2.0,
        loop_age_s=0.0,
        local={},
    )
    assert doc["nodes"]["n1"]["missing_networks"] == ["br-backend"]
    assert doc["nodes"]["n2"]["missing_networks"] == []
    assert doc["guests"]["g"]["networks"] == ["br-backend", "eth0.100"]
    assert doc["guests"]["g"]["network_refusals"] == [
        "n1 lacks br-backend",
        "n3 lacks br-backend, eth0.100",
    ]
    assert doc["guests"]["h"]["network_refusals"] == []
    text = format_status(doc)
    assert "up (lacks br-backend, eth0.100)" in text
