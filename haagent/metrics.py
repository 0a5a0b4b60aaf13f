"""Prometheus metrics, in a per-agent CollectorRegistry (several agents may share a process
in tests, and the default registry would mix them).

Gauges describing the cluster are refreshed from the consensus view on every pass; counters
and the failover histogram are fed by events as they happen.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from haagent.model import ClusterState, GuestState, NodeState
from haagent.ports import ConsensusView, HeartbeatSeen
from haagent.status import lease_loss_reason

FAILOVER_BUCKETS_S = (0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
RENEWAL_BUCKETS_S = (0, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 5)
LATE_RENEWAL_FRACTION = 0.5
"""A renewal is late when less than this fraction of the lease it extends was left."""


class AgentMetrics:
    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.raft_term = Gauge(
            "haagent_raft_term", "Current Raft term seen by this agent.", registry=r
        )
        self.raft_leader = Gauge(
            "haagent_raft_leader", "1 if this agent believes it is the Raft leader.", registry=r
        )
        self.raft_quorum = Gauge(
            "haagent_raft_quorum",
            "1 if this agent holds a valid lease, i.e. a heartbeat committed by a majority "
            "within lease_s.",
            registry=r,
        )
        # Storage (issue 14): kept minimal here while the metrics move to a scrape-time
        # collector; it belongs with the other raft gauges there.
        self.raft_storage_error = Gauge(
            "haagent_raft_storage_error",
            "1 while this agent's Raft journal cannot be written (disk full or I/O error): it "
            "then acknowledges nothing and counts toward no majority.",
            registry=r,
        )
        self.lease_remaining = Gauge(
            "haagent_lease_remaining_seconds",
            "Seconds left on this node's lease (0 if none).",
            registry=r,
        )
        self.node_state = Gauge(
            "haagent_node_state",
            "1 for the state each node is in (committed).",
            ["node", "state"],
            registry=r,
        )
        self.heartbeat_age = Gauge(
            "haagent_node_heartbeat_age_seconds",
            "Seconds since this agent applied the node's last heartbeat.",
            ["node"],
            registry=r,
        )
        self.guest_state = Gauge(
            "haagent_guest_state",
            "1 for the state each guest is in (committed).",
            ["guest", "state"],
            registry=r,
        )
        self.guest_owner = Gauge(
            "haagent_guest_owner",
            "1 for the node owning each guest.",
            ["guest", "node"],
            registry=r,
        )
        self.local_running = Gauge(
            "haagent_local_guests_running",
            "Protected guests this node's hypervisor runs now (observed).",
            registry=r,
        )
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
        self.tolerated_failures = Gauge(
            "haagent_tolerated_node_failures",
            "How many hypervisors may fail now with every wanted guest still running "
            "(Raft majority, memory and placement rules; see GET /v1/whatif).",
            registry=r,
        )
        self.loop_passes = Counter(
            "haagent_reconcile_passes", "Reconcile passes of this agent's loop.", registry=r
        )
        self._tracker = FailoverTracker()
        # Raft elections and replica progress (issue 15: a lossy link or a busy CPU must show
        # before it costs a lease).
        self.raft_pre_votes = Counter(
            "haagent_raft_pre_votes",
            "Pre-votes this agent's replica started (its election timer fired).",
            registry=r,
        )
        self.raft_elections = Counter(
            "haagent_raft_elections",
            "Real elections this agent's replica started (a pre-vote won, or a transfer).",
            registry=r,
        )
        self.raft_pre_votes_refused = Counter(
            "haagent_raft_pre_votes_refused",
            "Pre-vote requests of other nodes refused because a leader was alive.",
            registry=r,
        )
        self.raft_term_changes = Counter(
            "haagent_raft_term_changes", "Raft term changes seen by this agent.", registry=r
        )
        self.replica_lag = Gauge(
            "haagent_replica_lag_entries",
            "Committed entries (leader's commit index as last heard) not yet applied here.",
            registry=r,
        )
        self.lease_renewal_remaining = Histogram(
            "haagent_lease_remaining_at_renewal_seconds",
            "Lease left when a renewal arrived (0: it had already lapsed).",
            buckets=RENEWAL_BUCKETS_S,
            registry=r,
        )
        self.lease_renewals_late = Counter(
            "haagent_lease_renewals_late",
            "Renewals that arrived with less than half of the lease left, or after it lapsed.",
            registry=r,
        )
        self.self_fences = Counter(
            "haagent_self_fences",
            "Times this node lost its lease (and so stopped its guests), by likeliest reason.",
            ["reason"],
            registry=r,
        )
        self._seen_stats: tuple[int, int, int] | None = None
        self._seen_term: int | None = None
        self._seen_lease_until = 0.0
        self._lease_valid = False

    def update(
        self, view: ConsensusView, now: float, lease_until: float, local_running: int | None
    ) -> None:
        state = view.state
        self._update_raft(view, now, lease_until)
        self.raft_term.set(view.term)
        self.raft_leader.set(1 if view.is_leader else 0)
        self.raft_quorum.set(1 if now < lease_until else 0)
        self.raft_storage_error.set(1 if view.storage_error else 0)
        self.lease_remaining.set(max(0.0, lease_until - now))
        for name, rec in state.nodes.items():
            for s in NodeState:
                self.node_state.labels(name, s.value).set(1 if rec.state is s else 0)
            seen = view.heartbeats.get(name)
            if seen is not None:
                self.heartbeat_age.labels(name).set(max(0.0, now - seen.at))
        for name, guest in state.guests.items():
            for gs in GuestState:
                self.guest_state.labels(name, gs.value).set(1 if guest.state is gs else 0)
            for node in state.nodes:
                self.guest_owner.labels(name, node).set(1 if guest.owner == node else 0)
        if local_running is not None:
            self.local_running.set(local_running)
        if view.is_leader:
            for duration in self._tracker.observe(state, view.heartbeats, now):
                self.failover_duration.observe(duration)
        else:
            self._tracker.observe(state, view.heartbeats, now)

    def _update_raft(self, view: ConsensusView, now: float, lease_until: float) -> None:
        stats = (view.pre_votes, view.elections, view.pre_votes_refused)
        if self._seen_stats is not None:
            counters = (self.raft_pre_votes, self.raft_elections, self.raft_pre_votes_refused)
            for counter, new, old in zip(counters, stats, self._seen_stats, strict=True):
                if new > old:
                    counter.inc(new - old)
        self._seen_stats = stats
        if self._seen_term is not None and view.term > self._seen_term:
            self.raft_term_changes.inc(view.term - self._seen_term)
        self._seen_term = view.term
        self.replica_lag.set(view.replica_lag)
        previous = self._seen_lease_until
        if lease_until > previous > 0:
            left = max(0.0, previous - now)
            self.lease_renewal_remaining.observe(left)
            if left < LATE_RENEWAL_FRACTION * (lease_until - now):
                self.lease_renewals_late.inc()
        self._seen_lease_until = max(previous, lease_until)
        valid = now < lease_until
        if self._lease_valid and not valid:
            self.self_fences.labels(lease_loss_reason(view)).inc()
        self._lease_valid = valid

    def render(self) -> bytes:
        return generate_latest(self.registry)


class FailoverTracker:
    """Turns committed state changes into failover durations.

    When a node becomes failed, remember when its last heartbeat was applied here (the start of
    the outage as this node measured it) and which guests it owned. When such a guest is next
    seen running on another node, report the elapsed time once.
    """

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}  # guest -> outage start (monotonic)
        self._failed: set[str] = set()

    def observe(
        self, state: ClusterState, heartbeats: Mapping[str, HeartbeatSeen], now: float
    ) -> list[float]:
        for name, rec in state.nodes.items():
            if rec.state in (NodeState.FAILED, NodeState.FENCED):
                if name not in self._failed:
                    self._failed.add(name)
                    seen = heartbeats.get(name)
                    start = seen.at if seen is not None else now
                    for owned in state.guests_of(name):
                        self._pending.setdefault(owned.name, start)
            else:
                self._failed.discard(name)
        done: list[float] = []
        for guest_name, start in list(self._pending.items()):
            guest = state.guests.get(guest_name)
            if guest is None:
                del self._pending[guest_name]
                continue
            owner_state = state.node(guest.owner).state if guest.owner else None
            if guest.state is GuestState.RUNNING and owner_state is NodeState.UP:
                done.append(now - start)
                del self._pending[guest_name]
        return done
