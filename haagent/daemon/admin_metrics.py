"""Scrape-time gauges of the admin verbs (issue 12 part 5), from the latest snapshot:

haagent_cluster_disarmed                  1 while the committed state says disarmed
haagent_cluster_disarmed_seconds          how long this agent has seen this disarm (its clock)
haagent_cluster_disarm_planned_seconds    the planned duration (`--for`)
haagent_node_frozen{node}                 1 for a frozen node (O(nodes) series)
haagent_node_watchdog_released{node}      1 while a node's watchdog is released by a disarm
                                          and not confirmed re-armed

The alert "disarmed for longer than planned" compares the first two with the third
(config/prometheus/haagent.rules.yml, HaagentDisarmedTooLong): the agents re-arm on their own
at the planned end, so a disarm that outlives it means the re-arm cannot commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from haagent.daemon.telemetry import Snapshot


def admin_families(snap: Snapshot, now: float) -> Iterator[Metric]:
    state = snap.view.state
    arming = state.arming
    yield GaugeMetricFamily(
        "haagent_cluster_disarmed",
        "1 while the cluster is disarmed (committed): no fencing, no recovery.",
        value=1 if arming.disarmed else 0,
    )
    since = snap.disarmed_since
    yield GaugeMetricFamily(
        "haagent_cluster_disarmed_seconds",
        "Seconds this agent has seen the current disarm, on its own clock (0 when armed).",
        value=max(0.0, now - since) if arming.disarmed and since is not None else 0.0,
    )
    yield GaugeMetricFamily(
        "haagent_cluster_disarm_planned_seconds",
        "The planned duration of the current disarm (0 when armed).",
        value=arming.for_s if arming.disarmed else 0.0,
    )
    frozen = GaugeMetricFamily(
        "haagent_node_frozen", "1 for a frozen node (committed).", labels=["node"]
    )
    released = GaugeMetricFamily(
        "haagent_node_watchdog_released",
        "1 while the node's watchdog is released by a disarm and not confirmed re-armed: "
        "its watchdog fence level is not trusted.",
        labels=["node"],
    )
    for name, rec in state.nodes.items():
        frozen.add_metric([name], 1 if rec.frozen else 0)
        released.add_metric([name], 1 if rec.watchdog_released else 0)
    yield frozen
    yield released
