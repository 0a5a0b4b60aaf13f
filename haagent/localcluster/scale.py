"""Measure a local cluster of real agents at scale: start-up, an idle window, one failover.

Used by `benchmarks/scale_real.py` (the full table) and by the integration test that runs a
shorter form in CI, so both measure the same way. Every agent is a real `haagent run` process
(libvirt's test driver, fence_dummy, real pysyncobj on loopback, the default timing profile
unless a plan says otherwise); APIs listen on unix sockets and Raft ports are picked outside the
ephemeral range (`haagent.localcluster.ports`), so runs do not collide with other sessions.

What each figure is, and where it comes from:

* lease-loss samples: `GET /v1/status` answers (every `sample_interval_s` per agent) with
  `quorum` false; self-fences: the agents' own `haagent_self_fences_total` counters (every
  lease loss, also between samples); those counted before the window began are reported as
  start-up self-fences (each agent's counter starts at 0 with its process): a cluster whose
  leases lapse while it comes up destroys guests it had just started;
* nodes declared failed: growth of the committed `failure_epoch` of any node; fences:
  `haagent_fence_operations_total` summed over the agents; term changes: highest Raft term any
  sample showed minus the term at the start of the window; pre-votes: `haagent_raft_pre_votes`
  summed over the agents (a follower that missed the leader's appends for an election timeout
  asked its peers; they refuse while they hear from the leader, so it costs messages, not the
  leader: a sign the leader's appends came late, not a failure by itself);
* CPU % (of one core) and RSS per agent from /proc over the window;
* pass duration p50/p99: `haagent_loop_pass_seconds` bucket counts added during the window,
  interpolated inside a bucket as Prometheus' `histogram_quantile` does (so a figure is at most
  one bucket bound off), over all agents and for the worst agent;
* Raft traffic per agent: the kernel's TCP counters (`ss -ti`: bytes and data segments, i.e.
  what crossed the wire after pysyncobj's encryption) of every established connection of that
  agent's pid to or from a Raft port;
* journal growth: the sum of the increases of `raft.journal` sampled every second (a log
  compaction shrinks the file; the growth inside the sample that spans it is not counted) and
  the committed entries over the window.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from haagent.localcluster.cluster import (
    ClusterPlan,
    GuestPlan,
    LocalCluster,
    local_plan,
    wait_for,
)
from haagent.localcluster.measure import (
    StatusSampler,
    Traffic,
    bucket_counts,
    counter_total,
    cpu_seconds,
    histogram_delta,
    histogram_quantile,
    raft_traffic,
    rss_mib,
    scrape,
)

GUEST_MEMORY_MIB = 64
POLL_S = 1.0
"""How often start-up and failover are polled: each poll may ask every agent for its status
document (what is measured must not be what the measuring costs)."""


def spread_guests(
    agents: int, count: int, memory_mib: int = GUEST_MEMORY_MIB
) -> tuple[GuestPlan, ...]:
    """`count` guests preferring the hypervisors in turn, so every node owns about as many."""
    return tuple(
        GuestPlan(f"g{i:03d}", memory_mib, 10, (f"n{(i - 1) % agents + 1}",))
        for i in range(1, count + 1)
    )


def scale_plan(
    agents: int, guests: int, api_dir: Path, timing: dict[str, Any] | None = None
) -> ClusterPlan:
    """`agents` hypervisors fenced by fence_dummy with `guests` guests spread over them, each
    node with memory for twice its share (so losing any one node still fits every guest)."""
    if agents < 3 or guests < 1:
        raise ValueError(f"need at least 3 agents and 1 guest, not {agents} and {guests}")
    base = local_plan(
        agents,
        fence="dummy",
        guests=spread_guests(agents, guests),
        timing=dict(timing or {}),
        api_unix_dir=api_dir,
    )
    share = math.ceil(guests / (agents - 1))
    memory = max(1024, 2 * share * GUEST_MEMORY_MIB)
    return replace(base, nodes=tuple(replace(n, memory_mib=memory) for n in base.nodes))


# --- the three phases -------------------------------------------------------------------------


def start_cluster(cluster: LocalCluster, timeout_s: float) -> tuple[float, float]:
    """Start every agent; return (seconds until every guest ran, seconds until every agent
    also held a lease and agreed on the leader), both from the first agent's start.

    The first is read from the guests' records: the wall-clock stamp each owner put on its
    `GuestRunning` (this machine's clock, as the start), so it does not include how long the
    polling took to see it. (On 22 agents / 110 guests the first status request to an agent
    starts its worker process, seconds under load, and a poll that timed out moved on to the
    next agent: the polled figure was 36 s for a cluster whose last guest ran after 14 s.)
    The second is polled, so it is an upper bound by up to one round of status requests."""
    cluster.start_bmcs()
    t0 = time.monotonic()
    t0_wall = time.time()
    for node in cluster.nodes():
        cluster.start_agent(node)
    doc = cluster.wait_ready(timeout_s, POLL_S)
    t_running = max(float(g["last_transition"]["at"]) for g in doc["guests"].values()) - t0_wall

    def settled() -> bool | None:
        docs = [cluster.status(n, 5.0) for n in cluster.nodes()]
        leaders = {d["leader"] for d in docs}
        return True if all(d["quorum"] for d in docs) and len(leaders) == 1 else None

    wait_for("every agent to hold a lease", settled, timeout_s, POLL_S)
    return t_running, time.monotonic() - t0


@dataclass
class IdleFigures:
    seconds: float
    samples: int
    sample_errors: int
    lease_loss_samples: int
    lease_loss_reasons: dict[str, int]
    self_fences: int
    startup_self_fences: int  # before the window: while the cluster came up
    declared_failed: int
    fences: int
    term_changes: int
    pre_votes: int
    cpu_percent: dict[str, float]
    rss_mib: dict[str, float]
    pass_p50_s: float
    pass_p99_s: float
    worst_pass_p99_s: tuple[str, float]
    passes: int
    leader: str
    traffic: dict[str, Traffic]
    entries: int  # committed during the window
    journal_growth_bytes: dict[str, int]
    journal_bytes_end: dict[str, int]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]

    @property
    def clean(self) -> bool:
        return not (
            self.lease_loss_samples
            or self.self_fences
            or self.declared_failed
            or self.fences
            or self.term_changes
        )


def journal_path(cluster: LocalCluster, node: str) -> Path:
    return cluster.run_dir / "state" / node / "raft" / "raft.journal"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _raft_ports(cluster: LocalCluster) -> set[int]:
    assert cluster.plan is not None
    return {n.raft_port for n in cluster.plan.nodes}


def idle_window(
    cluster: LocalCluster, seconds: float, sample_interval_s: float = 1.0
) -> IdleFigures:
    """Watch the running cluster for `seconds` without touching it (beyond the sampling)."""
    nodes = cluster.nodes()
    pids = {n: p for n in nodes if (p := cluster.agent_pid(n)) is not None}
    by_pid = {p: n for n, p in pids.items()}
    ports = _raft_ports(cluster)
    first = cluster.any_status()
    leader = str(first["leader"])
    term0 = int(first["term"])
    epochs0 = {n: int(r["failure_epoch"]) for n, r in first["nodes"].items()}
    load_before = os.getloadavg()
    scrapes0 = {n: scrape(cluster, n) for n in nodes}
    traffic0 = raft_traffic(by_pid, ports)
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    sampler = StatusSampler(cluster, sample_interval_s).start()
    journals = {n: journal_path(cluster, n) for n in nodes}
    sizes = {n: _file_size(j) for n, j in journals.items()}
    growth = dict.fromkeys(nodes, 0)
    try:
        while (left := t0 + seconds - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            for n, j in journals.items():
                size = _file_size(j)
                growth[n] += max(0, size - sizes[n])
                sizes[n] = size
    finally:
        sampler.stop()
    elapsed = time.monotonic() - t0
    cpu1 = {n: cpu_seconds(p) for n, p in pids.items()}
    traffic1 = raft_traffic(by_pid, ports)
    scrapes1 = {n: scrape(cluster, n) for n in nodes}
    load_after = os.getloadavg()
    last = cluster.any_status()

    answers = sampler.answers
    reasons: dict[str, int] = {}
    for a in answers:
        if not a["quorum"]:
            key = f"{a['node']}: {a['reason']}"
            reasons[key] = reasons.get(key, 0) + 1
    epochs = dict(epochs0)
    for a in [*answers, {"epochs": {n: r["failure_epoch"] for n, r in last["nodes"].items()}}]:
        for n, e in a["epochs"].items():
            epochs[n] = max(epochs.get(n, 0), int(e))
    terms = [a["term"] for a in answers] + [int(last["term"])]
    hist = "haagent_loop_pass_seconds"
    deltas = {
        n: histogram_delta(bucket_counts(scrapes1[n], hist), bucket_counts(scrapes0[n], hist))
        for n in nodes
    }
    combined: dict[float, float] = {}
    for d in deltas.values():
        for b, v in d.items():
            combined[b] = combined.get(b, 0.0) + v
    p99 = {n: histogram_quantile(0.99, d) for n, d in deltas.items()}
    worst = max(p99, key=lambda n: p99[n] if not math.isnan(p99[n]) else -1.0)

    def counter_delta(name: str) -> int:
        return round(
            sum(counter_total(scrapes1[n], name) - counter_total(scrapes0[n], name) for n in nodes)
        )

    return IdleFigures(
        seconds=elapsed,
        samples=len(answers),
        sample_errors=sampler.errors,
        lease_loss_samples=sum(1 for a in answers if not a["quorum"]),
        lease_loss_reasons=reasons,
        self_fences=counter_delta("haagent_self_fences_total"),
        startup_self_fences=round(
            sum(counter_total(scrapes0[n], "haagent_self_fences_total") for n in nodes)
        ),
        declared_failed=sum(epochs[n] - epochs0.get(n, 0) for n in epochs),
        fences=counter_delta("haagent_fence_operations_total"),
        term_changes=max(terms) - term0,
        pre_votes=counter_delta("haagent_raft_pre_votes_total"),
        cpu_percent={n: 100 * (cpu1[n] - cpu0[n]) / elapsed for n in pids},
        rss_mib={n: rss_mib(p) for n, p in pids.items()},
        pass_p50_s=histogram_quantile(0.5, combined),
        pass_p99_s=histogram_quantile(0.99, combined),
        worst_pass_p99_s=(worst, p99[worst]),
        passes=round(combined.get(math.inf, 0.0)),
        leader=leader,
        traffic={n: traffic1[n].minus(traffic0[n]) for n in traffic1 if n in traffic0},
        entries=int(last["commit_index"]) - int(first["commit_index"]),
        journal_growth_bytes=growth,
        journal_bytes_end=sizes,
        load_before=load_before,
        load_after=load_after,
    )


@dataclass(frozen=True)
class FailoverFigures:
    victim: str
    victim_was_leader: bool
    guests: int
    all_running_s: float  # SIGKILL -> the last of the victim's guests running elsewhere
    median_guest_s: float
    first_guest_s: float
    per_guest_s: dict[str, float] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)  # each guest's before the kill


def kill_owner(
    cluster: LocalCluster, timeout_s: float = 120.0, leader: bool = False
) -> FailoverFigures:
    """SIGKILL the agent (a power loss of its hypervisor) owning the most guests — a follower
    unless `leader` — and wait until each of its guests runs on a survivor at a higher
    generation. Times are from the kill (this process's wall clock) to the wall-clock stamp
    the new owner put on its `GuestRunning` (the same machine, so the same clock)."""
    doc = cluster.any_status()
    owned: dict[str, list[str]] = {}
    for g, rec in doc["guests"].items():
        if rec["owner"] is not None:
            owned.setdefault(rec["owner"], []).append(g)
    candidates = [n for n in owned if (n == doc["leader"]) == leader]
    if not candidates:
        raise RuntimeError(f"no {'leader' if leader else 'follower'} owns a guest")
    victim = max(candidates, key=lambda n: (len(owned[n]), n))
    before = {g: int(doc["guests"][g]["generation"]) for g in owned[victim]}
    t_kill = time.time()
    cluster.signal_agent(victim, signal.SIGKILL)

    def recovered() -> dict[str, float] | None:
        d = cluster.any_status(exclude=(victim,))
        done: dict[str, float] = {}
        for g, gen in before.items():
            rec = d["guests"][g]
            if rec["state"] != "running" or rec["owner"] == victim or rec["generation"] <= gen:
                return None
            done[g] = float(rec["last_transition"]["at"]) - t_kill
        return done

    per_guest = wait_for(f"{victim}'s guests to run elsewhere", recovered, timeout_s, 0.25)
    values = sorted(per_guest.values())
    return FailoverFigures(
        victim=victim,
        victim_was_leader=victim == doc["leader"],
        guests=len(values),
        all_running_s=values[-1],
        median_guest_s=statistics.median(values),
        first_guest_s=values[0],
        per_guest_s=per_guest,
        generations=before,
    )
