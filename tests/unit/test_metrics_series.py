"""Metrics conventions (issue 12): series counts stay bounded at 64 nodes and 10,000 guests,
no family is labelled by guest and node, and the names follow Prometheus conventions."""

from __future__ import annotations

import re
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.metrics_state import exposition, promtool, sample_counts, synthetic_state

NODES, GUESTS = 64, 10_000
# Per guest: its state and its owner, and (only while it waits for one) "unplaced".
# Per node: 4 node states, heartbeat age, 3 watchdog gauges, 5 guest-state counts, the fence
# operations by result (2, made at 0 from the config) and the missing-network count. The rest
# is a fixed number (histogram buckets included) that does not grow with either.
PER_GUEST, PER_NODE, FIXED = 3, 16, 300


def test_series_stay_linear_in_nodes_plus_guests_at_64_nodes_and_10000_guests() -> None:
    state = synthetic_state(NODES, GUESTS)
    t0 = time.perf_counter()
    text = exposition(state)
    took = time.perf_counter() - t0
    counts = sample_counts(text)
    total = sum(counts.values())
    print(f"\n{NODES} nodes x {GUESTS} guests: {total} series, {len(text)} bytes, {took:.2f}s")
    assert total <= PER_GUEST * GUESTS + PER_NODE * NODES + FIXED, counts
    # No family holds a series per (guest, node) or per (guest, state) pair.
    for family in text_string_to_metric_families(text):
        labels = set().union(*(s.labels for s in family.samples)) if family.samples else set()
        if "guest" in labels:
            assert len(family.samples) <= GUESTS, family.name
    # Each guest has exactly one state series and at most one owner series.
    assert counts["haagent_guest_state"] == GUESTS
    assert counts["haagent_guest_owner"] == GUESTS - GUESTS // 10


def test_small_state_shows_each_guest_once_with_its_state_owner_and_waiting() -> None:
    state = synthetic_state(5, 10)
    families = {f.name: f for f in text_string_to_metric_families(exposition(state))}
    states = {s.labels["guest"]: s.labels["state"] for s in families["haagent_guest_state"].samples}
    assert states == {name: g.state.value for name, g in state.guests.items()}
    owners = {s.labels["guest"]: s.labels["node"] for s in families["haagent_guest_owner"].samples}
    assert owners == {n: g.owner for n, g in state.guests.items() if g.owner is not None}
    # guest-00009 has no owner; guest-00003 and guest-00008 are stopped on a failed/fenced node.
    unplaced = {s.labels["guest"] for s in families["haagent_guest_unplaced"].samples}
    assert unplaced == {
        n
        for n, g in state.guests.items()
        if g.state.value == "stopped" and (g.owner is None or state.node(g.owner).state != "up")
    }
    assert "guest-00009" in unplaced
    totals = {s.labels["state"]: s.value for s in families["haagent_guests"].samples}
    assert sum(totals.values()) == 10
    armed = {s.labels["node"]: s.value for s in families["haagent_node_watchdog_armed"].samples}
    assert armed == {"hv00": 1, "hv01": 0, "hv02": 1, "hv03": 0, "hv04": 1}
    required = {
        s.labels["node"]: s.value for s in families["haagent_node_watchdog_required"].samples
    }
    assert required == {"hv00": 1, "hv01": 0, "hv02": 0, "hv03": 1, "hv04": 0}
    assert families["haagent_replica_incompatible"].samples[0].value == 0
    assert 0 < families["haagent_watchdog_pet_age_seconds"].samples[0].value < 1
    build = families["haagent_build_info"].samples[0].labels
    assert set(build) == {"version", "python", "pysyncobj"}
    digest = families["haagent_config_info"].samples[0].labels["digest"]
    assert re.fullmatch(r"[0-9a-f]{16}", digest)


NAME = re.compile(r"haagent_[a-z0-9_]+")


def test_names_follow_prometheus_conventions_and_promtool_accepts_the_exposition() -> None:
    text = exposition(synthetic_state(5, 10))
    for family in text_string_to_metric_families(text):
        assert NAME.fullmatch(family.name), family.name
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation timestamps of counters and histograms
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        elif family.name.endswith("_total"):
            raise AssertionError(f"{family.name}: only counters end in _total")
        if "duration" in family.name or family.name.endswith("_age"):
            assert family.name.endswith("_seconds"), family.name
    promtool("check", "metrics", stdin=text)


def test_network_conditions_are_one_count_per_node_and_one_cluster_wide() -> None:
    from dataclasses import replace

    from haagent.model import GuestState

    state = synthetic_state(5, 10)
    active = (GuestState.STARTING, GuestState.RUNNING)
    lacking = next(g.owner for g in state.guests.values() if g.owner and g.state in active)
    nodes = dict(state.nodes)
    nodes[lacking] = replace(nodes[lacking], missing_networks=("br0", "eth1"))
    guests = {
        n: replace(g, spec=replace(g.spec, networks=("br0",))) for n, g in state.guests.items()
    }
    state = replace(state, nodes=nodes, guests=guests)
    families = {f.name: f for f in text_string_to_metric_families(exposition(state))}
    missing = {s.labels["node"]: s.value for s in families["haagent_node_missing_networks"].samples}
    assert missing == {n: 2 if n == lacking else 0 for n in state.nodes}
    stranded = [g for g in state.guests_of(lacking) if g.state in active]
    assert stranded
    (sample,) = families["haagent_guests_lacking_network"].samples
    assert sample.value == len(stranded)
