"""Agent metrics beyond Raft: build and config identity, proposals, fences, observations, and
the scrape-time gauges the shipped alerts and dashboard need (issue 12).

Two kinds, like the rest of telemetry:
- event metrics (`AgentEventMetrics`), updated as events happen at O(1) each, from the loop
  or its tasks;
- scrape-time gauges (`snapshot_families`), computed from the latest published snapshot in
  the offload, never on the loop.

Series budget (README "Metrics"): nothing here is labelled by guest *and* node. Per-guest
families have at most one series per guest; per-node families a fixed number per node; the
rest a fixed number. `tests/unit/test_metrics_series.py` counts them at 64 nodes and 10,000
guests.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

import haagent
from haagent.commands import Command
from haagent.core.digests import config_digest
from haagent.core.settings import AgentSettings
from haagent.model import ClusterState, DesiredState, GuestState, NodeState
from haagent.ports import Outcome
from haagent.vendor.pysyncobj.version import VERSION as PYSYNCOBJ_VERSION

if TYPE_CHECKING:
    from haagent.daemon.telemetry import Snapshot

PROPOSAL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10)
FENCE_BUCKETS_S = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120)
MIGRATION_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# Migration commands this agent's loop committed -> the outcome of haagent_migrations_total
# (the source commits the hand-over or the abort; the destination the resume).
MIGRATION_OUTCOMES = {
    "migration_done": "handed_over",
    "migration_aborted": "aborted",
    "migration_resumed": "resumed",
}


def settings_digest(settings: AgentSettings) -> str:
    """A short digest of the cluster-wide settings this agent decides with (nodes, guests,
    timing, placement limits; no secrets, no paths, not its own node name). Every agent of a
    healthy cluster exports the same value; two values mean their configs diverged, which
    makes leaders decide differently (e.g. spec sync flapping between two guest specs). It is
    the digest each agent commits with its join (`haagent.core.digests.config_digest`): the
    state machine refuses a node whose digest differs from the up nodes'."""
    return config_digest(settings)


def _pysyncobj_version() -> str:
    # The vendored copy is patched (PATCHES.md): say so, it is not upstream's release.
    return f"{PYSYNCOBJ_VERSION}+haagent"


class AgentEventMetrics:
    """Identity gauges and event metrics of one agent (O(1) per event)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        build = Gauge(
            "haagent_build_info",
            "Always 1; the labels say which haagent, Python and pysyncobj this agent runs.",
            ["version", "python", "pysyncobj"],
            registry=r,
        )
        build.labels(haagent.__version__, platform.python_version(), _pysyncobj_version()).set(1)
        self._config_info = Gauge(
            "haagent_config_info",
            "Always 1; digest = a hash of the cluster-wide settings (nodes, guests, timing, "
            "placement). Agents of one cluster must agree.",
            ["digest"],
            registry=r,
        )
        self.proposals = Counter(
            "haagent_proposals",
            "Replicated commands this agent's loop proposed, by command type and outcome "
            "(accepted, refused: the state moved on, unknown: no commit seen in time).",
            ["command", "outcome"],
            registry=r,
        )
        self.proposal_seconds = Histogram(
            "haagent_proposal_duration_seconds",
            "From proposing a command to knowing its outcome (or giving up: unknown).",
            ["command"],
            buckets=PROPOSAL_BUCKETS_S,
            registry=r,
        )
        self.fence_seconds = Histogram(
            "haagent_fence_duration_seconds",
            "Duration of each fence operation this agent ran (all levels), by result.",
            ["result"],
            buckets=FENCE_BUCKETS_S,
            registry=r,
        )
        self.migrations = Counter(
            "haagent_migrations",
            "Live-migration steps this agent committed, by outcome: handed_over and aborted "
            "(counted by the source: every migration ends in one of them unless the source "
            "was fenced), resumed (by the destination, once it runs the guest).",
            ["outcome"],
            registry=r,
        )
        for outcome in MIGRATION_OUTCOMES.values():
            self.migrations.labels(outcome)  # every series from the start (0, not absent)
        self.migration_seconds = Histogram(
            "haagent_migration_duration_seconds",
            "Duration of each live migration's libvirt call on this agent (the source), from "
            "the call to libvirt reporting it complete.",
            buckets=MIGRATION_BUCKETS_S,
            registry=r,
        )
        self.observation_errors = Counter(
            "haagent_observation_errors",
            "Failed or timed-out listings of the local hypervisor (the agent then cannot "
            "see its guests).",
            registry=r,
        )

    def set_config(self, settings: AgentSettings) -> None:
        self._config_info.clear()
        self._config_info.labels(settings_digest(settings)).set(1)

    def proposal_done(self, command: Command, outcome: Outcome, took_s: float) -> None:
        name = command.type_name or type(command).__name__
        self.proposals.labels(name, outcome.kind.value).inc()
        self.proposal_seconds.labels(name).observe(max(0.0, took_s))
        if outcome.accepted and name in MIGRATION_OUTCOMES:
            self.migrations.labels(MIGRATION_OUTCOMES[name]).inc()

    def fence_done(self, ok: bool, took_s: float) -> None:
        self.fence_seconds.labels("ok" if ok else "failed").observe(max(0.0, took_s))

    def observation_failed(self, _detail: str = "") -> None:
        self.observation_errors.inc()


def _unplaced(state: ClusterState, guest_owner: str | None) -> bool:
    if guest_owner is None:
        return True
    return state.node(guest_owner).state is not NodeState.UP


def _leg_stale(state: ClusterState) -> GaugeMetricFamily:
    stale = GaugeMetricFamily(
        "haagent_guest_leg_stale",
        "Each raid1 guest's legs: 1 while the leg is committed stale (it missed writes; the "
        "guest runs degraded on its other leg until a resync makes it fresh), else 0.",
        labels=["guest", "leg"],
    )
    for name, guest in state.guests.items():
        for leg in guest.spec.legs:
            stale.add_metric([name, leg.id], 1 if guest.leg_stale(leg.id) else 0)
    return stale


def snapshot_families(snap: Snapshot, now: float) -> Iterator[Metric]:
    """The scrape-time gauges added for alerts and the dashboard (see the module docstring)."""
    view, state = snap.view, snap.view.state
    yield GaugeMetricFamily(
        "haagent_replica_incompatible",
        "1 while this agent's replica is frozen on a committed command it cannot decode "
        "(mixed versions): it holds no lease and runs no guests until upgraded.",
        value=1 if view.incompatible else 0,
    )
    if snap.watchdog_pet_at is not None:
        yield GaugeMetricFamily(
            "haagent_watchdog_pet_age_seconds",
            "Seconds since this agent last pet its watchdog (it stops petting on purpose "
            "while it has no lease and guests may run).",
            value=max(0.0, now - snap.watchdog_pet_at),
        )
    required = GaugeMetricFamily(
        "haagent_node_watchdog_required",
        "1 if the node's fencing relies on its watchdog (fence = watchdog or a watchdog level).",
        labels=["node"],
    )
    armed = GaugeMetricFamily(
        "haagent_node_watchdog_armed",
        "1 if the node committed the timeout of a watchdog it armed (others may count on a "
        "reset); 0: nobody may rely on its watchdog.",
        labels=["node"],
    )
    timeout = GaugeMetricFamily(
        "haagent_node_watchdog_timeout_seconds",
        "The watchdog timeout the node armed and committed (only nodes that have one).",
        labels=["node"],
    )
    per_node: dict[str, dict[GuestState, int]] = {}
    for name, rec in state.nodes.items():
        required.add_metric([name], 1 if name in snap.watchdog_required else 0)
        armed.add_metric([name], 0 if rec.watchdog_timeout_s is None else 1)
        if rec.watchdog_timeout_s is not None:
            timeout.add_metric([name], rec.watchdog_timeout_s)
        per_node[name] = dict.fromkeys(GuestState, 0)
    yield required
    yield armed
    yield timeout
    totals = dict.fromkeys(GuestState, 0)
    unplaced = GaugeMetricFamily(
        "haagent_guest_unplaced",
        "1 for each guest that should run but has no owner that is up (only such guests).",
        labels=["guest"],
    )
    for name, guest in state.guests.items():
        totals[guest.state] += 1
        if guest.owner is not None and guest.owner in per_node:
            per_node[guest.owner][guest.state] += 1
        wanted = guest.desired is DesiredState.RUNNING and guest.state is not GuestState.ERROR
        if wanted and guest.state is GuestState.STOPPED and _unplaced(state, guest.owner):
            unplaced.add_metric([name], 1)
    yield unplaced
    yield _leg_stale(state)
    guests = GaugeMetricFamily(
        "haagent_guests", "Guests in each state (committed).", labels=["state"]
    )
    for gs, count in totals.items():
        guests.add_metric([gs.value], count)
    yield guests
    node_guests = GaugeMetricFamily(
        "haagent_node_guests",
        "Guests each node owns, by state (committed).",
        labels=["node", "state"],
    )
    for node, counts in per_node.items():
        for gs, count in counts.items():
            node_guests.add_metric([node, gs.value], count)
    yield node_guests
