"""What-if: the leader's own placement, applied to hypothetical failures."""

from __future__ import annotations

from haagent.model import GuestSpec, NodeRole
from haagent.whatif import planned_state, tolerated_failures, what_if

HV = NodeRole.HYPERVISOR


def test_moves_and_what_would_not_fit() -> None:
    nodes = {"n1": HV, "n2": HV, "n3": HV}
    cap = {"n1": 1000, "n2": 1000, "n3": 500}
    guests = [
        GuestSpec("big", "big", 800, priority=5, preferred_nodes=("n1",)),
        GuestSpec("mid", "mid", 400, preferred_nodes=("n2",)),
        GuestSpec("small", "small", 300, preferred_nodes=("n3",)),
    ]
    state = planned_state(nodes, guests, cap)
    assert {g: r.owner for g, r in state.guests.items()} == {
        "big": "n1",
        "mid": "n2",
        "small": "n3",
    }
    result = what_if(state, cap, ["n1"])
    assert result.quorum_kept and result.moves == {} and "big" in result.unplaced
    assert "needs 800 MiB" in result.unplaced["big"]
    result = what_if(state, cap, ["n3"])
    assert result.moves == {"small": ("n3", "n2")} and not result.unplaced


def test_losing_the_majority_recovers_nothing() -> None:
    nodes = {"n1": HV, "n2": HV, "n3": HV}
    state = planned_state(
        nodes, [GuestSpec("g", "g", 100, preferred_nodes=("n1",))], dict.fromkeys(nodes, 1000)
    )
    result = what_if(state, dict.fromkeys(nodes, 1000), ["n1", "n2"])
    assert not result.quorum_kept and not result.moves and "majority" in result.unplaced["g"]


def test_tolerated_failures_is_the_smaller_of_quorum_and_capacity() -> None:
    five = {f"n{i}": HV for i in range(1, 6)}
    roomy = dict.fromkeys(five, 10_000)
    state = planned_state(five, [GuestSpec(f"g{i}", f"g{i}", 1000) for i in range(5)], roomy)
    assert tolerated_failures(state, roomy)[0] == 2  # 5 voters: a majority survives 2 losses
    tight = dict.fromkeys(five, 1500)
    state = planned_state(five, [GuestSpec(f"g{i}", f"g{i}", 1000) for i in range(5)], tight)
    count, why = tolerated_failures(state, tight)
    assert count == 0 and "1 failures" in why  # no node has room for a second guest


def test_a_witness_counts_as_a_voter_but_hosts_nothing() -> None:
    nodes = {"n1": HV, "n2": HV, "w": NodeRole.WITNESS}
    cap = {"n1": 1000, "n2": 1000}
    state = planned_state(nodes, [GuestSpec("g", "g", 500, preferred_nodes=("n1",))], cap)
    assert tolerated_failures(state, cap)[0] == 1
    assert what_if(state, cap, ["n1"]).moves == {"g": ("n1", "n2")}


def test_large_clusters_are_estimated_and_say_so() -> None:
    nodes = {f"n{i:02}": HV for i in range(40)}
    cap = dict.fromkeys(nodes, 4000)
    state = planned_state(nodes, [GuestSpec(f"g{i}", f"g{i}", 1000) for i in range(80)], cap)
    count, why = tolerated_failures(state, cap)
    assert count == 19 and "estimated" in why


def test_the_what_if_skips_nodes_lacking_a_guests_network_and_says_so() -> None:
    from dataclasses import replace

    nodes = {"n1": HV, "n2": HV, "n3": HV}
    cap = dict.fromkeys(nodes, 1000)
    spec = GuestSpec("web", "web", 100, preferred_nodes=("n1", "n2"), networks=("br-backend",))
    state = planned_state(nodes, [spec], cap)
    lacking = {**state.nodes, "n2": replace(state.nodes["n2"], missing_networks=("br-backend",))}
    state = replace(state, nodes=lacking)
    assert what_if(state, cap, ["n1"]).moves == {"web": ("n1", "n3")}  # not the preferred n2
    lacking["n3"] = replace(state.nodes["n3"], missing_networks=("br-backend", "eth1"))
    result = what_if(replace(state, nodes=lacking), cap, ["n1"])
    assert not result.moves
    assert result.unplaced == {"web": "n2 lacks br-backend; n3 lacks br-backend"}
