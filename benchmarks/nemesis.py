#!/usr/bin/env python3
"""Nemesis: real agents in network namespaces under seeded random faults (issue 8 item 11).

    .venv/bin/python benchmarks/nemesis.py [--runs 1] [--seed S] [--nodes 5] [--faults 6]
                                           [--guests 5] [--profile balanced|robust|fast] [--json]

Each run starts `--nodes` real `haagent run` agents, one per network namespace on one bridge
(tests/helpers/netns_cluster.py), fenced by the stock `fence_ipmilan` against simulated BMCs
on the switch that really power a node off (SIGKILL of its agent, whose libvirt test driver
dies with it). Then `--faults` times: draw a fault, hold it, heal everything (power every node
that is off back on through its BMC) and wait until the cluster is whole again. Faults:

* cut: one node's cable pulled;  * partition: a minority cut off from the rest;
* drop_in / drop_out: one node's firewall drops all it receives / sends (one-way);
* pause: SIGSTOP of one agent, SIGCONT at the heal;  * kill: SIGKILL, powered on at the heal.

About half of them are aimed at the current leader. Every agent's status (its hypervisor's
running guests: `local`) is sampled every 100 ms over unix sockets, a path no network fault
cuts (tests/helpers/cluster_watch.py). Per run and in total it prints:

* double runs: moments a guest may have run on two nodes (conservative: an unanswered sample
  keeps what the node last ran; only the death of its process ends that);
* lost guests: guests not running on exactly one node once the final heal has settled;
* false failures / false fences: declarations and fences of nodes that no fault touched
  (an unfaulted node may still lose its lease, e.g. behind a deaf leader: that is no excuse);
* lease-regain times: from the heal (or the power-on of a node that was off) until each node
  that had lost its lease holds one again; separately for deposed, fenced, restarted leaders.

The seed (printed) fixes the schedule: kinds, durations, aim and target draws. Which node is
leader at each fault is up to the cluster, so a replay repeats the schedule, not every timing.
Exits 1 if any double run, lost guest, false failure or false fence was seen, or the cluster
did not become whole again within 90 s of a heal. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from haagent.localcluster.cluster import LocalCluster
from haagent.timing import DEFAULT_TIMING_PROFILE, TIMING_PROFILES
from tests.helpers.cluster_watch import ClusterWatch, log_lines
from tests.helpers.netns import NetnsLab
from tests.helpers.netns_cluster import KINDS, heal_all, inject, netns_plan, wait_settled

SETTLE_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Fault:
    kind: str
    targets: tuple[str, ...]
    at_leader: bool  # aimed at the leader (it was among the targets)
    hold_s: float
    start: float  # monotonic
    heal: float
    settled: float | None  # None: the cluster did not become whole again in time

    def describe(self) -> str:
        took = "never" if self.settled is None else f"{self.settled - self.heal:.1f}s"
        return (
            f"{self.kind} {','.join(self.targets)}{' (leader)' if self.at_leader else ''} "
            f"for {self.hold_s:.1f}s, whole again after the heal: {took}"
        )


@dataclass(frozen=True)
class Regain:
    node: str
    fault: int  # index into the run's faults
    seconds: float | None  # None: no lease by the end of the settle wait
    after_answer_s: float | None  # of which after its agent first answered (startup excluded)
    restarted: bool  # its agent was powered on at the heal (the time counts from then)
    deposed_leader: bool  # it was the leader when the fault began and was restarted


@dataclass
class RunResult:
    seed: int
    nodes: int
    profile: str
    faults: list[Fault] = field(default_factory=list)
    regains: list[Regain] = field(default_factory=list)
    double_runs: list[str] = field(default_factory=list)
    lost_guests: list[str] = field(default_factory=list)
    false_failures: list[str] = field(default_factory=list)
    false_fences: list[str] = field(default_factory=list)
    fences: int = 0
    samples: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        bad = self.double_runs or self.lost_guests or self.false_failures or self.false_fences
        return not bad and all(f.settled is not None for f in self.faults)

    def line(self) -> str:
        kinds = " ".join(f.kind + ("*" if f.at_leader else "") for f in self.faults)
        times = [r.seconds for r in self.regains if r.seconds is not None]
        worst = f"{max(times):.2f}s" if times else "-"
        return (
            f"seed {self.seed}: {self.nodes} nodes, faults [{kinds}] (*: at the leader), "
            f"{self.seconds:.0f} s; double runs {len(self.double_runs)}, lost guests "
            f"{len(self.lost_guests)}, false failures {len(self.false_failures)}, false fences "
            f"{len(self.false_fences)} (of {self.fences} fences); {len(self.regains)} lease "
            f"regains, worst {worst}"
            + "".join(f"\n    {f.describe()}" for f in self.faults)
            + "".join(f"\n    {p}" for p in [*self.double_runs, *self.lost_guests])
            + "".join(f"\n    {p}" for p in [*self.false_failures, *self.false_fences])
        )


def fresh_view(watch: ClusterWatch) -> dict[str, Any] | None:
    """The freshest status document from a node holding a lease."""
    answers = [watch.latest(node) for node in watch.nodes]
    leased = [o for o in answers if o is not None and o.doc is not None and o.doc["quorum"]]
    return max(leased, key=lambda o: o.t0).doc if leased else None


def current_leader(watch: ClusterWatch) -> str | None:
    view = fresh_view(watch)
    return str(view["leader"]) if view is not None and view["leader"] else None


def draw(rng: random.Random, names: list[str], leader: str | None) -> tuple[str, tuple[str, ...]]:
    """A fault kind and its targets; about half the time aimed at `leader`."""
    # The same draws whoever leads, so a seed always gives the same schedule of kinds,
    # durations and aims.
    kind = rng.choice(KINDS)
    aim = rng.random() < 0.5
    pick = rng.choice(names)
    first = leader if aim and leader is not None else pick
    if kind != "partition":
        return kind, (first,)
    rest = [n for n in names if n != first]
    size = max(1, (len(names) - 1) // 2)
    return kind, (first, *rng.sample(rest, size - 1))


def power_on_dead(cluster: LocalCluster, watch: ClusterWatch, powered: dict[str, float]) -> None:
    """Power every node whose agent is not running back on through its BMC (as an admin
    would after a fence), noting when; not while its fence is pending (declared failed, not
    yet fenced): the fence agent's status polling would see it on and power it off again."""
    view = fresh_view(watch)
    for node in cluster.nodes():
        pending = view is not None and view["nodes"].get(node, {}).get("state") == "failed"
        if cluster.agent_pid(node) is None and not pending:
            cluster.bmcs[node].chassis("power", "on")
            powered[node] = time.monotonic()


def whole(watch: ClusterWatch, since: float, guests: list[str]) -> bool:
    """Every agent answered after `since` holding a lease, all name one leader that sees every
    node up, and every guest runs (as committed and on exactly one hypervisor)."""
    latest = [watch.latest_after(n, since) for n in watch.nodes]
    if any(o is None or o.doc is None or not o.doc["quorum"] for o in latest):
        return False
    docs = [o.doc for o in latest if o is not None and o.doc is not None]
    if len({d["leader"] for d in docs}) != 1:
        return False
    view = next(d for d in docs if d["node"] == d["leader"]) if docs[0]["leader"] else docs[0]
    if any(rec["state"] != "up" for rec in view["nodes"].values()):
        return False
    for g in guests:
        if view["guests"].get(g, {}).get("state") != "running":
            return False
        if sum(1 for d in docs if g in (d["local"] or {})) != 1:
            return False
    return True


def settle(
    cluster: LocalCluster, watch: ClusterWatch, since: float, guests: list[str], lease_s: float
) -> tuple[float | None, dict[str, float]]:
    """Power dead nodes on until the cluster is whole again and stays so for a lease (or
    SETTLE_TIMEOUT_S passed); returns when it became whole, and when each node was powered on.

    Why a lease more: a node may hold a lease from a heartbeat sent before the fault and lose
    it just after the heal (its TCP connections still backing off), destroying its guests
    and restarting them a moment later; the end of a run must not fall into that moment."""
    powered: dict[str, float] = {}
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    next_power = 0.0
    first: float | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_power:
            power_on_dead(cluster, watch, powered)
            next_power = now + 2.0  # a fence may still kill what we start
        if not whole(watch, max([since, *powered.values()]), guests):
            first = None
        elif first is None:
            first = now
        elif now >= first + lease_s and whole(watch, first + lease_s, guests):
            return first, powered
        time.sleep(0.1)
    return None, powered


def regains(
    watch: ClusterWatch, k: int, fault: Fault, leader: str | None, powered: dict[str, float]
) -> list[Regain]:
    """For each node that lost its lease during fault `k` (or was its target): how long after
    the heal (or its power-on) it held one again."""
    out = []
    for node in watch.nodes:
        during = [o for o in watch.observations(node) if fault.start <= o.t0 <= fault.heal]
        lost = any(o.doc is None or not o.doc["quorum"] for o in during)
        if not (lost or node in fault.targets):
            continue
        ref = max(fault.heal, powered.get(node, fault.heal))
        after = [o for o in watch.answers(node) if o.t0 >= ref and o.doc is not None]
        first = next((o for o in after if o.doc is not None and o.doc["quorum"]), None)
        restarted = node in powered
        out.append(
            Regain(
                node,
                k,
                None if first is None else round(first.t1 - ref, 3),
                None if first is None else round(first.t1 - after[0].t0, 3),
                restarted,
                restarted and node == leader,
            )
        )
    return out


def faulted(faults: list[Fault], node: str, t: float) -> bool:
    """Was `node` a target of a fault whose effects were not yet over at monotonic `t`?"""
    return any(
        node in f.targets and f.start <= t <= (f.settled or float("inf")) + 1.0 for f in faults
    )


def judge(cluster: LocalCluster, watch: ClusterWatch, result: RunResult, guests: list[str]) -> None:
    """Fill the run's safety figures from the watch record and the agents' logs."""
    result.double_runs = [p for g in sorted(watch.guests_seen()) for p in watch.overlaps(g)]
    final = [watch.latest(n) for n in watch.nodes]
    for g in guests:
        on = [o.node for o in final if o is not None and g in (o.local or {})]
        if len(on) != 1:
            result.lost_guests.append(f"{g} runs on {on or 'no node'} at the end")
    seen: set[tuple[str, int]] = set()
    declared: list[tuple[float, str, bool]] = []  # (when, node, falsely)
    for o in watch.answers():
        for node, rec in o.doc["nodes"].items():  # type: ignore[index]
            failure = rec.get("failure")
            if failure is None or (node, rec["failure_epoch"]) in seen:
                continue
            seen.add((node, rec["failure_epoch"]))
            t = float(failure["declared_at"]) - watch.wall_offset
            falsely = t >= watch.started_at and not faulted(result.faults, node, t)
            declared.append((t, node, falsely))
            if falsely:
                result.false_failures.append(
                    f"{node} declared failed at {watch.rel(t)}: {failure['detail']}"
                )
    declared.sort()
    for by in cluster.nodes():
        for when, m in log_lines(cluster, by, r"fence (n\d+): (OK|FAILED)"):
            t = when - watch.wall_offset
            if t < watch.started_at:
                continue
            result.fences += 1
            # A fence ends the node's latest declaration, which may well come after the fault
            # window (fence agents are slow): it is false when that declaration was.
            before = [falsely for d, node, falsely in declared if node == m.group(1) and d <= t]
            if not before or before[-1]:
                result.false_fences.append(f"{by} fenced {m.group(1)} at {watch.rel(t)}")


def run(
    seed: int,
    nodes: int = 5,
    faults: int = 6,
    guests: int = 5,
    profile: str | None = None,
    run_dir: Path | None = None,
) -> RunResult:
    """One seeded run. Everything it starts is stopped before it returns."""
    rng = random.Random(seed)
    timing = TIMING_PROFILES[profile or DEFAULT_TIMING_PROFILE]
    result = RunResult(seed, nodes, profile or DEFAULT_TIMING_PROFILE)
    began = time.monotonic()
    with ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nemesis-")))
        lab = NetnsLab(nodes, subnet=f"10.215.{seed % 250}")
        lab.up()
        stack.callback(lab.down)
        api_dir = run_dir / "api"
        api_dir.mkdir(parents=True, exist_ok=True)
        plan = netns_plan(lab, api_dir, guests, profile, fence="ipmi")
        cluster = LocalCluster(run_dir / "cluster", plan)
        cluster.write()
        stack.callback(cluster.stop)
        cluster.start(timeout_s=60.0)
        wait_settled(cluster)
        names = cluster.nodes()
        guest_names = [g.name for g in plan.guests]
        watch = ClusterWatch(cluster, interval_s=0.1, request_timeout_s=1.0)
        watch.start()
        stack.callback(watch.stop)
        for k in range(faults):
            leader = current_leader(watch)
            kind, targets = draw(rng, names, leader)
            hold_s = round(rng.uniform(0.5 * timing.lease_s, 2 * timing.failure_timeout_s), 2)
            start = time.monotonic()
            inject(lab, cluster, kind, targets)
            time.sleep(hold_s)
            heal_all(lab, cluster)
            healed = time.monotonic()
            settled, powered = settle(cluster, watch, healed, guest_names, timing.lease_s)
            fault = Fault(kind, targets, leader in targets, hold_s, start, healed, settled)
            result.faults.append(fault)
            result.regains += regains(watch, k, fault, leader, powered)
            if settled is None:
                break  # not whole again: judge what we have
            time.sleep(1.0)
        watch.stop()
        judge(cluster, watch, result, guest_names)
        result.samples = len(watch.answers())
    result.seconds = time.monotonic() - began
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(results: list[RunResult]) -> list[str]:
    """The totals over all runs, with lease-regain percentiles."""
    regains = [r for res in results for r in res.regains]
    lines = [
        f"total: {len(results)} runs, {sum(len(r.faults) for r in results)} faults, "
        f"{sum(r.fences for r in results)} fences; double runs "
        f"{sum(len(r.double_runs) for r in results)}, lost guests "
        f"{sum(len(r.lost_guests) for r in results)}, false failures "
        f"{sum(len(r.false_failures) for r in results)}, false fences "
        f"{sum(len(r.false_fences) for r in results)}; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    ]
    groups = (
        ("all lease regains", regains),
        ("restarted nodes", [r for r in regains if r.restarted]),
        ("deposed, fenced and restarted leaders", [r for r in regains if r.deposed_leader]),
    )
    for label, group in groups:
        times = [r.seconds for r in group if r.seconds is not None]
        up = [r.after_answer_s for r in group if r.after_answer_s is not None]
        missing = len(group) - len(times)
        if times:
            lines.append(
                f"  {label}: {len(group)}, p50 {percentile(times, 0.5):.2f}s p99 "
                f"{percentile(times, 0.99):.2f}s max {max(times):.2f}s; after the agent "
                f"first answered: p50 {percentile(up, 0.5):.2f}s p99 {percentile(up, 0.99):.2f}s"
                f" max {max(up):.2f}s" + (f"; {missing} never regained" if missing else "")
            )
        else:
            lines.append(f"  {label}: {len(group)}" + (", none regained" if group else ""))
    return lines


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help="first seed (run k uses seed + k)")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--faults", type=int, default=6, help="faults per run")
    p.add_argument("--guests", type=int, default=5)
    p.add_argument("--profile", choices=sorted(TIMING_PROFILES), default=None)
    p.add_argument("--keep", type=Path, default=None, help="folder to keep run folders in")
    p.add_argument(
        "--keep-failed", type=Path, default=None, help="folder to keep unclean runs' folders in"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.nodes < 3:
        p.error("--nodes must be at least 3")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"nemesis: seed {seed}, {args.runs} runs", flush=True)
    # SIGTERM unwinds like ^C, so every run's processes and namespaces are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results = []
    for k in range(args.runs):
        folder = args.keep or args.keep_failed
        keep = folder / f"seed-{seed + k}" if folder else None
        res = run(seed + k, args.nodes, args.faults, args.guests, args.profile, keep)
        if keep is not None and args.keep is None and res.clean:
            shutil.rmtree(keep)
        results.append(res)
        print(res.line() if not args.json else json.dumps(asdict(res)), flush=True)
    print("\n".join(summary(results)))
    return 0 if all(r.clean for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
