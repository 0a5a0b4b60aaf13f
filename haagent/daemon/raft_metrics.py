"""Raft and lease event metrics: elections, term changes, late renewals, self-fences.

Fed once per pass by `Telemetry.publish` and once per lease renewal by the shell, at O(1) (a
few comparisons), so it may run on the lease path. Issue 15: a lossy link or a busy CPU must
show in Prometheus before it costs a lease, and a lease that was lost must say why.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram

from haagent.ports import ConsensusView
from haagent.status import lease_loss_reason

RENEWAL_BUCKETS_S = (0, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 5)
LATE_RENEWAL_FRACTION = 0.5
"""A renewal is late when less than this fraction of the lease it extends was left."""
LEASE_LOSS_REASONS = (
    "incompatible",
    "storage_error",
    "no_leader",
    "replica_lagging",
    "heartbeats_not_committing",
)
"""Every value `lease_loss_reason` returns: their self-fence series exist at 0 from the start,
because `increase()` cannot see a counter's first step from nothing to 1 (an alert on the first
self-fence would never fire)."""


class RaftEventMetrics:
    """Counters derived from successive views. The replica-lag gauge is a cluster gauge,
    rendered at scrape time from the snapshot (see `ClusterCollector`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.pre_votes = Counter(
            "haagent_raft_pre_votes",
            "Pre-votes this agent's replica started (its election timer fired).",
            registry=r,
        )
        self.elections = Counter(
            "haagent_raft_elections",
            "Real elections this agent's replica started (a pre-vote won, or a transfer).",
            registry=r,
        )
        self.pre_votes_refused = Counter(
            "haagent_raft_pre_votes_refused",
            "Pre-vote requests of other nodes refused because a leader was alive.",
            registry=r,
        )
        self.term_changes = Counter(
            "haagent_raft_term_changes", "Raft term changes seen by this agent.", registry=r
        )
        self.renewal_remaining = Histogram(
            "haagent_lease_remaining_at_renewal_seconds",
            "Lease left when a renewal arrived (0: it had already lapsed).",
            buckets=RENEWAL_BUCKETS_S,
            registry=r,
        )
        self.renewals_late = Counter(
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
        for reason in LEASE_LOSS_REASONS:
            self.self_fences.labels(reason)
        self._seen_stats: tuple[int, int, int] | None = None
        self._seen_term: int | None = None
        self._lease_valid = False

    def renewed(self, now: float, until_before: float, until_after: float) -> None:
        """A committed heartbeat (or join) moved the lease's end from `until_before` to
        `until_after` at `now`. Measured when the renewal arrives, not at the next pass: a
        renewal brings no pass of its own, and the next one (up to a heartbeat period later)
        read a lease up to a period shorter than the renewal had found it."""
        if not math.isfinite(until_before):
            return  # the first lease: nothing was renewed
        left = max(0.0, until_before - now)
        self.renewal_remaining.observe(left)
        if left < LATE_RENEWAL_FRACTION * (until_after - now):
            self.renewals_late.inc()

    def observe(self, view: ConsensusView, now: float, lease_until: float) -> None:
        """Account for what changed since the previous call (one call per pass)."""
        stats = (view.pre_votes, view.elections, view.pre_votes_refused)
        if self._seen_stats is not None:
            counters = (self.pre_votes, self.elections, self.pre_votes_refused)
            for counter, new, old in zip(counters, stats, self._seen_stats, strict=True):
                if new > old:
                    counter.inc(new - old)
        self._seen_stats = stats
        if self._seen_term is not None and view.term > self._seen_term:
            self.term_changes.inc(view.term - self._seen_term)
        self._seen_term = view.term
        valid = now < lease_until
        if self._lease_valid and not valid:
            self.self_fences.labels(lease_loss_reason(view)).inc()
        self._lease_valid = valid
