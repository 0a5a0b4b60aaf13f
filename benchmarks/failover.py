#!/usr/bin/env python3
"""Failover benchmark on this machine, for one timing profile (default: the default one).

    .venv/bin/python benchmarks/failover.py [--runs 10] [--profile balanced|robust|fast]
                                            [--skip-saturation] [--skip-idle] [--fence dummy|ipmi]

Prints, for fence_dummy and for fence_ipmilan against ipmi_sim: median and max over N runs of
the time from SIGKILL of the owner's agent to the guest running on a survivor; then the idle
CPU and RSS of one agent; then whether anyone gets fenced while both cores are saturated.

Timing source: the kill instant is time.time() in this process just before os.kill; the
recovery instant is the wall-clock stamp the new owner put on its `GuestRunning` command
(committed right after it saw the domain running). Both clocks are this machine's one clock.
Each run reuses the cluster: the victim is powered back on (or restarted) and rejoins first.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from haagent.config import DEFAULT_TIMING_PROFILE, TIMING_PROFILES
from haagent.localcluster.cli import power_on
from haagent.localcluster.cluster import (
    GuestPlan,
    LocalCluster,
    local_plan,
    running_cluster,
    wait_for,
)
from haagent.localcluster.measure import cpu_seconds, rss_mib

GUEST = "g1"


def one_failover(cluster: LocalCluster, fence: str) -> float:
    doc = cluster.any_status()
    victim = doc["guests"][GUEST]["owner"]
    generation = doc["guests"][GUEST]["generation"]
    survivors = [n for n in cluster.nodes() if n != victim]
    t_kill = time.time()
    cluster.signal_agent(victim, signal.SIGKILL)

    def recovered() -> float | None:
        for node in survivors:
            try:
                d = cluster.status(node, 1.0)
            except (OSError, ValueError):
                continue
            if not d["quorum"]:
                continue
            g = d["guests"][GUEST]
            if g["generation"] > generation and g["state"] == "running" and g["owner"] != victim:
                return float(g["last_transition"]["at"]) - t_kill
        return None

    elapsed = wait_for("recovery", recovered, 60, 0.05)
    # Bring the victim back for the next run and wait until it is up again.
    if fence == "ipmi":
        power_on(cluster, victim)
    else:
        cluster.start_agent(victim)
    wait_for(f"{victim} to rejoin", lambda: cluster.rejoined(victim), 30)
    return elapsed


PROFILE = DEFAULT_TIMING_PROFILE


def _timing() -> dict[str, Any]:
    return {"profile": PROFILE}


def failovers(fence: str, runs: int) -> list[float]:
    plan = local_plan(3, fence=fence, guests=(GuestPlan(GUEST, 256),), timing=_timing())
    with (
        tempfile.TemporaryDirectory(prefix="haagent-bench-") as d,
        running_cluster(Path(d), plan) as cluster,
    ):
        return [one_failover(cluster, fence) for _ in range(runs)]


def idle_cost(seconds: float) -> dict[str, Any]:
    plan = local_plan(3, fence="dummy", guests=(GuestPlan(GUEST, 256),), timing=_timing())
    with (
        tempfile.TemporaryDirectory(prefix="haagent-bench-") as d,
        running_cluster(Path(d), plan) as cluster,
    ):
        time.sleep(2)  # settle after start-up
        pids = {n: cluster.agent_pid(n) for n in cluster.nodes()}
        leader = cluster.any_status()["leader"]
        before = {n: cpu_seconds(p) for n, p in pids.items() if p}
        time.sleep(seconds)
        return {
            n: {
                "cpu_percent": 100 * (cpu_seconds(p) - before[n]) / seconds,
                "rss_mib": rss_mib(p),
                "leader": n == leader,
            }
            for n, p in pids.items()
            if p
        }


def saturation(seconds: float) -> dict[str, Any]:
    """Run two busy loops per core for `seconds` and count fences and lost leases."""
    plan = local_plan(3, fence="dummy", guests=(GuestPlan(GUEST, 256),), timing=_timing())
    hogs: list[subprocess.Popen[bytes]] = []
    with (
        tempfile.TemporaryDirectory(prefix="haagent-bench-") as d,
        running_cluster(Path(d), plan) as cluster,
    ):
        start = cluster.any_status()
        epochs_before = {n: v["failure_epoch"] for n, v in start["nodes"].items()}
        term_before = start["term"]
        try:
            for _ in range(2 * (os.cpu_count() or 2)):
                hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
            lease_losses = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for node in cluster.nodes():
                    try:
                        if not cluster.status(node, 2.0)["quorum"]:
                            lease_losses += 1
                    except (OSError, ValueError):
                        pass
                time.sleep(0.2)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        end_doc = cluster.any_status()
        return {
            "fences": sum(
                v["failure_epoch"] - epochs_before[n] for n, v in end_doc["nodes"].items()
            ),
            "term_changes": end_doc["term"] - term_before,
            "lease_loss_samples": lease_losses,
            "hogs": len(hogs),
        }


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name}: runs {len(values)}  median {statistics.median(values):.2f} s  "
        f"max {max(values):.2f} s  min {min(values):.2f} s  "
        f"all [{', '.join(f'{v:.2f}' for v in values)}]"
    )


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=_count, default=10, help="failovers per fence agent (0: none)")
    p.add_argument("--idle-seconds", type=_seconds, default=30.0)
    p.add_argument("--saturation-seconds", type=_seconds, default=60.0)
    p.add_argument("--skip-saturation", action="store_true")
    p.add_argument("--skip-idle", action="store_true")
    p.add_argument("--profile", choices=sorted(TIMING_PROFILES), default=DEFAULT_TIMING_PROFILE)
    p.add_argument("--fence", choices=("dummy", "ipmi"), action="append")
    args = p.parse_args()
    global PROFILE
    PROFILE = args.profile
    t = TIMING_PROFILES[PROFILE]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: {os.cpu_count()} cores, load average {load}; timing profile {PROFILE} "
        f"(heartbeat {t.heartbeat_s} s, lease {t.lease_s} s, failure timeout "
        f"{t.failure_timeout_s} s, stop grace {t.stop_grace_s} s, elections "
        f"{t.election_timeout_min_s}-{t.election_timeout_max_s} s)"
    )
    for fence in (args.fence or ("dummy", "ipmi")) if args.runs else ():
        label = "fence_dummy" if fence == "dummy" else "fence_ipmilan + ipmi_sim"
        print(
            summary(
                f"SIGKILL owner -> guest running on a survivor, {label}",
                failovers(fence, args.runs),
            ),
            flush=True,
        )
    idle = {} if args.skip_idle else idle_cost(args.idle_seconds)
    for node, figures in sorted(idle.items()):
        print(
            f"idle agent {node}{' (leader)' if figures['leader'] else ''}: "
            f"{figures['cpu_percent']:.1f} % of one core, RSS {figures['rss_mib']:.1f} MiB "
            f"(over {args.idle_seconds:.0f} s)",
            flush=True,
        )
    if not args.skip_saturation:
        sat = saturation(args.saturation_seconds)
        print(
            f"saturation ({sat['hogs']} busy loops on {os.cpu_count()} cores, "
            f"{args.saturation_seconds:.0f} s): nodes declared failed/fenced {sat['fences']}, "
            f"Raft term changes {sat['term_changes']}, "
            f"status samples without lease {sat['lease_loss_samples']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
