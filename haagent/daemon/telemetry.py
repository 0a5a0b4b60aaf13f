"""Telemetry: what the loop publishes, and everything computed from it off the loop.

Contract with the loop (the lease path): each pass publishes one `Snapshot` (references to
immutable objects, O(1)) and records its duration and lag in `LoopStats` (O(1)). Nothing here
that grows with nodes x guests runs on the loop:

- The cluster gauges are computed when scraped, by `ClusterCollector` over the latest
  snapshot, in the offload (`haagent.daemon.offload`: a thread for small clusters, a process
  for large ones); the event metrics (counters, histograms) are updated as events happen, at
  O(1) each, and rendered with them.
- The status document is built and serialized in the offload too.
- The failover tracker runs on the loop only when the committed state changed, at O(nodes).

Thread model: the loop writes `latest` (one reference assignment) and the counters; a scrape
reads `latest` and hands it to the offload. A snapshot is never mutated after publication.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from haagent.agent import AgentSettings, LocalView
from haagent.daemon.admin_metrics import admin_families
from haagent.daemon.agent_metrics import AgentEventMetrics, snapshot_families
from haagent.daemon.failover import FailoverTracker
from haagent.daemon.offload import Offload
from haagent.daemon.raft_metrics import RaftEventMetrics
from haagent.model import ClusterState, GuestState, NodeState, StorageKind
from haagent.ports import ConsensusView, DomainObservation
from haagent.status import build_status, divergence_report

FAILOVER_BUCKETS_S = (0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
PASS_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
LAG_WINDOW_S = 60.0  # `max_lag_s` and the lag gauge cover the passes of the last minute


@dataclass(frozen=True)
class Tolerance:
    """The latest tolerated-failures answer, computed off the loop under a budget."""

    tolerated: int
    detail: str
    computed_at: float  # monotonic, when the computation finished
    took_s: float
    commit_index: int  # of the state it was computed on


@dataclass(frozen=True)
class Snapshot:
    """What the loop knew at the end of one pass. Immutable; replaced, never changed."""

    view: ConsensusView
    at: float  # monotonic time of the pass
    lease_until: float
    local: LocalView
    protected_domains: frozenset[str]  # domains of the guests in the config
    # Nodes whose fencing relies on their watchdog (from the config), and when this agent
    # last pet its own watchdog (monotonic; None: it has none open).
    watchdog_required: frozenset[str] = frozenset()
    watchdog_pet_at: float | None = None
    voters: int = 0  # configured nodes (0: unknown, then the state's node count)
    config_digest: str | None = None  # this node's cluster-wide config digest
    disarmed_since: float | None = None  # when this agent first saw the current disarm


class LoopStats:
    """Pass durations and lag, recorded by the loop at O(1) per pass.

    Lag of a pass = when it started minus when it was due (the earliest wake-up request or
    deadline it serves). A blocked or starved loop shows as lag; a slow pass as duration.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self.passes = 0
        self.last_pass_s = 0.0
        self.last_lag_s = 0.0
        self.last_pass_at = time.monotonic()
        # (monotonic time, lag) of recent passes whose lag was a new window maximum candidate.
        self._lags: collections.deque[tuple[float, float]] = collections.deque()
        self._durations: collections.deque[float] = collections.deque(maxlen=1000)

    def record(self, started_at: float, due_at: float, duration_s: float) -> None:
        lag = max(0.0, started_at - due_at)
        self.passes += 1
        self.last_pass_s = duration_s
        self.last_lag_s = lag
        self.last_pass_at = started_at
        self._histogram.observe(duration_s)
        self._durations.append(duration_s)
        # A monotonic deque: the window maximum is at the left, O(1) amortised.
        while self._lags and self._lags[-1][1] <= lag:
            self._lags.pop()
        self._lags.append((started_at, lag))
        while self._lags and self._lags[0][0] < started_at - LAG_WINDOW_S:
            self._lags.popleft()

    def max_lag_s(self, since: float = -float("inf")) -> float:
        """The largest lag of the passes that started at or after `since`, within the
        window. The deque holds decreasing lags in time order, so it is the first one."""
        lags = list(self._lags)  # the worker reads while the loop appends
        return next((lag for at, lag in lags if at >= since), 0.0)

    def summary(self, now: float) -> dict[str, Any]:
        """For the status document (any thread)."""
        durations = sorted(self._durations)

        def quantile(q: float) -> float:
            if not durations:
                return 0.0
            return durations[min(len(durations) - 1, int(q * len(durations)))]

        return {
            "passes": self.passes,
            "age_s": round(max(0.0, now - self.last_pass_at), 4),
            "last_pass_s": round(self.last_pass_s, 6),
            "pass_p50_s": round(quantile(0.5), 6),
            "pass_p99_s": round(quantile(0.99), 6),
            "pass_max_s": round(durations[-1] if durations else 0.0, 6),
            "lag_s": round(self.last_lag_s, 6),
            "max_lag_s": round(self.max_lag_s(), 6),
            "lag_window_s": LAG_WINDOW_S,
            "recent_passes": len(durations),
        }


class ClusterCollector(Collector):
    """The cluster gauges from one snapshot, at scrape time `now`. Plain values in, so it
    can run in the offload process."""

    def __init__(
        self,
        snap: Snapshot | None,
        tolerance: Tolerance | None,
        max_lag_s: float,
        now: float,
        node: str = "",
    ) -> None:
        self._snap, self._tol, self._lag, self._now = snap, tolerance, max_lag_s, now
        self._node = node

    def collect(self) -> Iterator[Metric]:
        snap, tol, now = self._snap, self._tol, self._now
        yield GaugeMetricFamily(
            "haagent_loop_lag_seconds",
            f"Largest lag of a reconcile pass behind its due time over the last "
            f"{LAG_WINDOW_S:.0f}s (0 when every pass ran on time).",
            value=self._lag,
        )
        yield GaugeMetricFamily(
            "haagent_tolerated_node_failures",
            "How many hypervisors may fail now with every wanted guest still running "
            "(Raft majority, memory and placement rules; see GET /v1/whatif). Computed off "
            "the loop; its age is haagent_tolerated_node_failures_age_seconds.",
            value=tol.tolerated if tol else 0,
        )
        yield GaugeMetricFamily(
            "haagent_tolerated_node_failures_age_seconds",
            "Seconds since haagent_tolerated_node_failures was computed (-1: not yet).",
            value=now - tol.computed_at if tol else -1,
        )
        if snap is None:
            return
        view, state = snap.view, snap.view.state
        for name, help_text, value in (
            ("haagent_raft_term", "Current Raft term seen by this agent.", view.term),
            (
                "haagent_raft_leader",
                "1 if this agent believes it is the Raft leader.",
                1 if view.is_leader else 0,
            ),
            (
                "haagent_raft_quorum",
                "1 if this agent holds a valid lease, i.e. a heartbeat committed by a majority "
                "within lease_s.",
                1 if now < snap.lease_until else 0,
            ),
            (
                "haagent_raft_storage_error",
                "1 while this agent's Raft journal cannot be written (disk full or I/O error): it "
                "then acknowledges nothing and counts toward no majority.",
                1 if view.storage_error else 0,
            ),
            (
                "haagent_lease_remaining_seconds",
                "Seconds left on this node's lease (0 if none).",
                max(0.0, snap.lease_until - now),
            ),
            (
                "haagent_replica_lag_entries",
                "Committed entries (leader's commit index as last heard) not yet applied here.",
                view.replica_lag,
            ),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        node_state = GaugeMetricFamily(
            "haagent_node_state",
            "1 for the state each node is in (committed).",
            labels=["node", "state"],
        )
        age = GaugeMetricFamily(
            "haagent_node_heartbeat_age_seconds",
            "Seconds since this agent applied the node's last heartbeat.",
            labels=["node"],
        )
        # One series per node (a count, never one per node and network: the names are in the
        # status document), and one cluster-wide count of guests that sit on a node lacking
        # one of their networks (held down, or with nowhere better to go: alert on it).
        missing = GaugeMetricFamily(
            "haagent_node_missing_networks",
            "Needed host networks each node reports missing, down or without carrier.",
            labels=["node"],
        )
        stranded = 0
        for name, rec in state.nodes.items():
            for s in NodeState:
                node_state.add_metric([name, s.value], 1 if rec.state is s else 0)
            seen = view.heartbeats.get(name)
            if seen is not None:
                age.add_metric([name], max(0.0, now - seen.at))
            missing.add_metric([name], len(rec.missing_networks))
            if rec.missing_networks:
                stranded += sum(
                    1
                    for g in state.guests_of(name)
                    if g.state in (GuestState.STARTING, GuestState.RUNNING) and rec.lacks(g.spec)
                )
        yield node_state
        yield age
        diverged = divergence_report(
            view, self._node, snap.voters or len(state.nodes), snap.config_digest
        )
        diverged_gauge = GaugeMetricFamily(
            "haagent_node_diverged",
            "1 for a node whose replicated state (digest at a checkpoint) or cluster-wide "
            "config differs from the cluster's, as this agent sees it (this node itself when "
            "it is incompatible): it holds no lease and is declared failed and fenced.",
            labels=["node"],
        )
        for name in sorted(set(state.nodes) | set(diverged) | {self._node}):
            diverged_gauge.add_metric([name], 1 if name in diverged else 0)
        yield diverged_gauge
        yield missing
        yield GaugeMetricFamily(
            "haagent_guests_lacking_network",
            "Guests starting or running on a node that reports one of their networks missing.",
            value=stranded,
        )
        # One series per guest, never one per guest and node (or state): at 64 nodes and
        # 10,000 guests a 0/1 series per pair would be 640,000 series per agent. The series
        # of the state (owner) a guest left disappears, which Prometheus marks stale at once.
        guest_state = GaugeMetricFamily(
            "haagent_guest_state",
            "1 for the state each guest is in (committed); only that state has a series.",
            labels=["guest", "state"],
        )
        owner = GaugeMetricFamily(
            "haagent_guest_owner",
            "1 for the node owning each guest (committed); guests without an owner have none.",
            labels=["guest", "node"],
        )
        for name, guest in state.guests.items():
            guest_state.add_metric([name, guest.state.value], 1)
            if guest.owner is not None:
                owner.add_metric([name, guest.owner], 1)
        yield guest_state
        yield owner
        yield from snapshot_families(snap, now)
        yield from admin_families(snap, now)
        yield from replica_metrics(snap.local, state)
        running = _local_running(snap.local.domains, snap.protected_domains, state)
        if running is not None:
            yield GaugeMetricFamily(
                "haagent_local_guests_running",
                "Protected guests this node's hypervisor runs now (observed).",
                value=running,
            )


def replica_metrics(local: LocalView, state: ClusterState) -> Iterator[Metric]:
    """`haagent_replica_*`: this node's DRBD replicas as last observed, one group of series
    per local replica (never guests x nodes). A replica whose events2 state is not current
    has only `haagent_replica_current 0`. Out-of-sync bytes are not exported: the events2
    stream the watcher reads carries no statistics."""
    resources = sorted(set(local.replicas) | set(local.replicas_unknown))
    if not resources:
        return
    guest_of = {
        g.spec.resource: g.name for g in state.guests.values() if g.spec.storage is StorageKind.DRBD
    }
    labels = ["guest", "resource"]
    current = GaugeMetricFamily(
        "haagent_replica_current",
        "1 while this node's events2 watcher of the DRBD resource is current (0: events2 dead "
        "or restarting; the agent then waits and never promotes it).",
        labels=labels,
    )
    role = GaugeMetricFamily(
        "haagent_replica_role",
        "1, labelled with the local replica's DRBD role (one series per replica).",
        labels=[*labels, "role"],
    )
    disk = GaugeMetricFamily(
        "haagent_replica_disk_state",
        "1, labelled with the local replica's disk state (the worst volume; one series per "
        "replica).",
        labels=[*labels, "state"],
    )
    flags = {
        name: GaugeMetricFamily(name, help_text, labels=labels)
        for name, help_text in (
            ("haagent_replica_connected", "1 while the replication link is Connected."),
            (
                "haagent_replica_suspended",
                "1 while DRBD holds the replica's I/O frozen (e.g. fence-peer running or failed).",
            ),
            (
                "haagent_replica_split_brain",
                "1 after a DRBD split brain until a connection comes up: never resolved "
                "automatically, an admin must act.",
            ),
        )
    }
    for resource in resources:
        ids = [guest_of.get(resource, ""), resource]
        rep = local.replicas.get(resource)
        current.add_metric(ids, 0 if rep is None else 1)
        if rep is None:
            continue
        role.add_metric([*ids, rep.role.value], 1)
        disk.add_metric([*ids, rep.disk.value], 1)
        for name, value in (
            ("haagent_replica_connected", rep.connected),
            ("haagent_replica_suspended", rep.suspended),
            ("haagent_replica_split_brain", rep.split_brain),
        ):
            flags[name].add_metric(ids, 1 if value else 0)
    yield current
    yield role
    yield disk
    yield from flags.values()


def _local_running(
    domains: Mapping[str, DomainObservation] | None, protected: frozenset[str], state: Any
) -> int | None:
    if domains is None:
        return None
    names = protected | {g.spec.domain for g in state.guests.values()}
    return sum(1 for d in domains.values() if d.running and d.name in names)


def render_cluster(
    snap: Snapshot | None,
    tolerance: Tolerance | None,
    max_lag_s: float,
    now: float,
    node: str = "",
) -> bytes:
    """The cluster part of the exposition (offload: thread or process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(snap, tolerance, max_lag_s, now, node))
    return generate_latest(registry)


def status_text(kwargs: dict[str, Any]) -> str:
    """The status document as JSON text (offload: thread or process)."""
    return json.dumps(build_status(**kwargs), indent=1, sort_keys=True) + "\n"


def state_size(view: ConsensusView) -> int:
    """The cost measure the offload decides with: nodes x guests."""
    return max(1, len(view.state.nodes)) * max(1, len(view.state.guests))


class Telemetry:
    """Event metrics, loop stats, the latest snapshot, and rendering off the loop.

    The registry holds only event metrics (counters, histograms: O(1) per event). The cluster
    gauges are rendered per scrape from the latest snapshot by `render_cluster` in the
    offload (a thread for small clusters, a process for large ones) and appended.
    """

    def __init__(self, node: str, offload: Offload) -> None:
        self.node = node
        self.offload = offload
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fence_operations = Counter(
            "haagent_fence_operations",
            "Fence operations run by this agent, by result.",
            ["node", "result"],
            registry=r,
        )
        self.failover_duration = Histogram(
            "haagent_failover_duration_seconds",
            "From the last heartbeat of a failed node (as applied by the leader) to each of its "
            "guests confirmed running on a survivor. Observed by the leader.",
            buckets=FAILOVER_BUCKETS_S,
            registry=r,
        )
        self.loop_passes = Counter(
            "haagent_reconcile_passes", "Reconcile passes of this agent's loop.", registry=r
        )
        pass_seconds = Histogram(
            "haagent_loop_pass_seconds",
            "Duration of each reconcile pass (read the views, decide, dispatch, publish).",
            buckets=PASS_BUCKETS_S,
            registry=r,
        )
        self.whatif_seconds = Gauge(
            "haagent_tolerated_node_failures_compute_seconds",
            "How long the last tolerated-failures computation took (off the loop).",
            registry=r,
        )
        self.raft_events = RaftEventMetrics(r)
        self.agent = AgentEventMetrics(r)
        self.loop = LoopStats(pass_seconds)
        self.latest: Snapshot | None = None
        self.tolerance: Tolerance | None = None
        self._tracker = FailoverTracker()
        self._tracked_state: object = None

    def set_config(self, settings: AgentSettings) -> None:
        """The config's identity, and a 0 series for every fence result of every node that can
        be fenced: `increase()` cannot see a counter's first step from nothing to 1, so an
        alert on the first failed fence would not fire without it."""
        self.agent.set_config(settings)
        for name, node in settings.nodes.items():
            if node.fence_method is not None:
                for result in ("ok", "failed"):
                    self.fence_operations.labels(name, result)
        for result in ("ok", "failed"):
            self.agent.fence_seconds.labels(result)

    def publish(self, snap: Snapshot) -> None:
        """Called by the loop once per pass: O(1), plus O(nodes) when the state changed."""
        self.latest = snap
        self.loop_passes.inc()
        self.raft_events.observe(snap.view, snap.at, snap.lease_until)
        state = snap.view.state
        if state is self._tracked_state:
            return
        self._tracked_state = state
        durations = self._tracker.observe(state, snap.view.heartbeats, snap.at)
        if snap.view.is_leader:
            for duration in durations:
                self.failover_duration.observe(duration)

    async def render_metrics(self) -> bytes:
        """The Prometheus exposition: event metrics, then the cluster gauges."""
        snap = self.latest
        size = 1 if snap is None else state_size(snap.view)
        events = await self.offload.run(generate_latest, self.registry, size=1)
        cluster = await self.offload.run(
            render_cluster,
            snap,
            self.tolerance,
            self.loop.max_lag_s(),
            time.monotonic(),
            self.node,
            size=size,
        )
        return events + cluster

    async def status_document(self, view: ConsensusView, **kwargs: Any) -> str:
        """The status document as JSON text, built and serialized in the offload."""
        kwargs["view"] = view
        return await self.offload.run(status_text, kwargs, size=state_size(view))

    def close(self) -> None:
        self.offload.close()
