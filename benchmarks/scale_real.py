#!/usr/bin/env python3
"""Real agents at scale on this machine: start-up, a minute idle, one power loss.

    .venv/bin/python benchmarks/scale_real.py [--size 12x60 --size 22x110 --size 12x500]
                                              [--idle-seconds 60] [--profile balanced|robust|fast]
                                              [--timing KEY=SECONDS] [--kill-leader]
                                              [--keep DIR]

For each size AGENTSxGUESTS: that many `haagent run` processes (libvirt's test driver,
fence_dummy, real pysyncobj on loopback, APIs on unix sockets, Raft ports outside the
ephemeral range) with the guests spread over them (haagent.localcluster.scale). It prints

* the time from the first agent's start to every guest running (and to every agent holding a
  lease), and the CPU time all agents and their worker processes used until then;
* how many self-fences the agents counted while coming up (leases that lapsed under the
  start-up load: guests started and destroyed again);
* over the idle window: lease-loss samples, self-fences, nodes declared failed, fences and Raft
  term changes (all must be 0), CPU % of one core and RSS per agent (all agents share this
  machine's cores), reconcile-pass duration p50/p99 from `haagent_loop_pass_seconds`, Raft
  traffic at the leader and a follower, journal growth;
* then SIGKILL of the follower owning the most guests (`--kill-leader`: the leader) and the
  time until each of its guests runs on a survivor (median, first, all).

Exits 1 if any size did not come up, was not steady, or did not fail over. Sizes run one after
the other; each cluster is stopped (by pid) before the next starts, also on failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from haagent.config import DEFAULT_TIMING_PROFILE, TIMING_PROFILES
from haagent.localcluster.cluster import ClusterError, LocalCluster
from haagent.localcluster.measure import cpu_seconds
from haagent.localcluster.scale import (
    FailoverFigures,
    IdleFigures,
    idle_window,
    kill_owner,
    scale_plan,
    start_cluster,
)

DEFAULT_SIZES = ("12x60", "22x110", "12x500")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _size(text: str) -> tuple[int, int]:
    agents, _, guests = text.partition("x")
    try:
        return int(agents), int(guests)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be AGENTSxGUESTS, not {text!r}") from None


def _timing_item(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--timing wants KEY=SECONDS, not {text!r}") from None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def idle_lines(f: IdleFigures, agents: int) -> list[str]:
    cpu = sorted(f.cpu_percent.values())
    rss = sorted(f.rss_mib.values())
    follower = next((n for n in sorted(f.traffic) if n != f.leader), None)
    lines = [
        f"  idle {f.seconds:.0f} s (load {' '.join(f'{x:.2f}' for x in f.load_before)} -> "
        f"{' '.join(f'{x:.2f}' for x in f.load_after)}); "
        f"{f.startup_self_fences} self-fences while coming up, before the window:",
        f"    lease-loss samples {f.lease_loss_samples} of {f.samples}"
        + (f" {f.lease_loss_reasons}" if f.lease_loss_reasons else "")
        + f", self-fences {f.self_fences}, declared failed {f.declared_failed}, "
        f"fences {f.fences}, Raft term changes {f.term_changes} (pre-votes {f.pre_votes})"
        + (f" (status requests failed: {f.sample_errors})" if f.sample_errors else ""),
        f"    CPU % of one core per agent: leader {f.cpu_percent.get(f.leader, float('nan')):.1f}, "
        f"others min {cpu[0]:.1f} median {cpu[len(cpu) // 2]:.1f} max {cpu[-1]:.1f}, "
        f"sum {sum(cpu):.0f} (all {agents} agents share {os.cpu_count()} cores)",
        f"    RSS per agent: min {rss[0]:.0f} MiB, median {rss[len(rss) // 2]:.0f} MiB, "
        f"max {rss[-1]:.0f} MiB",
        f"    pass duration over {f.passes} passes: p50 {_ms(f.pass_p50_s)}, "
        f"p99 {_ms(f.pass_p99_s)}; worst agent's p99 {_ms(f.worst_pass_p99_s[1])} "
        f"({f.worst_pass_p99_s[0]})",
    ]
    for label, node in (("leader", f.leader), ("follower", follower)):
        t = f.traffic.get(node) if node else None
        if t is None:
            continue
        s = f.seconds
        lines.append(
            f"    Raft traffic at the {label} {node}: out {t.bytes_out / s / 1024:.1f} KiB/s "
            f"in {t.bytes_in / s / 1024:.1f} KiB/s, data segments out {t.segs_out / s:.0f}/s "
            f"in {t.segs_in / s:.0f}/s over {len(t.connections)} connections"
        )
    rate = f.entries / f.seconds
    for label, node in (("leader", f.leader), ("follower", follower)):
        if node is None:
            continue
        grew = f.journal_growth_bytes.get(node, 0)
        per_entry = grew / f.entries if f.entries else float("nan")
        lines.append(
            f"    journal at the {label}: {rate:.0f} entries/s committed, +{grew / 1024:.0f} KiB "
            f"written ({per_entry:.0f} B/entry, {grew / f.seconds * 3600 / 2**20:.0f} MiB/h "
            f"before compaction), {f.journal_bytes_end.get(node, 0) / 1024:.0f} KiB at the end"
        )
    return lines


def failover_lines(f: FailoverFigures) -> list[str]:
    return [
        f"  SIGKILL {f.victim}{' (the leader)' if f.victim_was_leader else ''}, owner of "
        f"{f.guests} guests: first running elsewhere after {f.first_guest_s:.2f} s, median "
        f"{f.median_guest_s:.2f} s, all {f.all_running_s:.2f} s"
    ]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def startup_cpu_s(cluster: LocalCluster) -> tuple[float, float]:
    """CPU time all agents used since they started (they all started with the cluster), and
    what their worker processes (the offload's) used: what a start-up costs, to set against
    the cores this machine shares with other sessions."""
    pids = [p for n in cluster.nodes() if (p := cluster.agent_pid(n)) is not None]
    workers = [c for p in pids for c in _children(p)]
    return sum(cpu_seconds(p) for p in pids), sum(cpu_seconds(c) for c in workers)


def run_size(
    agents: int, guests: int, args: argparse.Namespace, base: Path
) -> tuple[bool, list[str]]:
    run_dir = base / f"{agents}x{guests}"
    api_dir = run_dir / "api"
    api_dir.mkdir(parents=True, exist_ok=True)
    timing: dict[str, Any] = {"profile": args.profile, **dict(args.timing or [])}
    cluster = LocalCluster(run_dir / "cluster", scale_plan(agents, guests, api_dir, timing))
    cluster.write()
    lines = [f"{agents} agents / {guests} guests (timing {timing}), load {_load()}"]
    try:
        try:
            running_s, leases_s = start_cluster(cluster, args.up_timeout)
        except ClusterError as exc:
            lines.append(f"  did not come up: {exc}")
            print("\n".join(lines), flush=True)
            return False, lines
        cpu_s, workers_s = startup_cpu_s(cluster)
        lines.append(
            f"  up: every guest running {running_s:.1f} s after the first agent started, "
            f"every agent holding a lease {leases_s:.1f} s; by then the agents used "
            f"{cpu_s:.0f} CPU-seconds and their worker processes {workers_s:.0f} "
            f"({(cpu_s + workers_s) / leases_s:.2f} cores on average)"
        )
        print("\n".join(lines), flush=True)
        idle = idle_window(cluster, args.idle_seconds)
        more = idle_lines(idle, agents)
        print("\n".join(more), flush=True)
        fail = kill_owner(cluster, leader=args.kill_leader)
        last = failover_lines(fail)
        print("\n".join(last), flush=True)
        return idle.clean and running_s < 60, lines + more + last
    finally:
        cluster.stop()


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=_size, action="append", help="AGENTSxGUESTS (repeatable)")
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--up-timeout", type=float, default=300.0)
    p.add_argument("--profile", choices=sorted(TIMING_PROFILES), default=DEFAULT_TIMING_PROFILE)
    p.add_argument(
        "--timing",
        type=_timing_item,
        action="append",
        help="KEY=SECONDS: a [timing] key on top of the profile (e.g. heartbeat_s=0.5)",
    )
    p.add_argument("--kill-leader", action="store_true")
    p.add_argument("--keep", type=Path, default=None, help="run folder to keep (logs)")
    args = p.parse_args()
    sizes = args.size or [_size(s) for s in DEFAULT_SIZES]
    print(f"machine: {os.cpu_count()} cores, load average {_load()}", flush=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="haagent-scale-") as tmp:
        base = args.keep or Path(tmp)
        for agents, guests in sizes:
            t0 = time.monotonic()
            good, _ = run_size(agents, guests, args, base)
            ok = ok and good
            print(f"  ({'steady' if good else 'NOT STEADY'}; {time.monotonic() - t0:.0f} s)\n")
    print(f"load average at the end {_load()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
