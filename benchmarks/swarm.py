#!/usr/bin/env python3
"""Swarm benchmark: many random fault schedules in the deterministic simulator.

    .venv/bin/python benchmarks/swarm.py [--seeds 10000] [--start 0] [--workers N]

Prints the seeds run, wall time, schedules per second, simulated time, and the violations
(target: 0), each with its seed and the command that replays it; then the tight-memory seeds
that left a guest without room after healing (tolerated: such a cluster cannot host all its
guests, and placement is greedy). Exit status 1 when any seed violated an invariant.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

from haagent.sim.swarm import format_failure, run_swarm, violation_kind


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10_000)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    report = run_swarm(range(args.start, args.start + args.seeds), args.workers)
    results = report.results
    print(f"seeds run:           {len(results)} ({args.start}..{args.start + args.seeds - 1})")
    print(f"workers:             {report.workers}")
    print(f"wall time:           {report.wall_s:.1f} s")
    print(f"schedules/s:         {report.schedules_per_s:.1f}")
    print(f"simulated time:      {report.simulated_s:,.0f} s ({report.simulated_s / 3600:.1f} h)")
    print(f"events traced:       {sum(r.events for r in results):,}")
    healing = sum(r.healing for r in results)
    print(f"faults injected:     {sum(r.faults for r in results) - healing:,}")
    print(f"healing steps:       {healing:,}")
    print(f"violations:          {len(report.failures)} seeds")
    kinds = collections.Counter(violation_kind(v) for r in report.failures for v in r.violations)
    for kind, count in kinds.most_common():
        print(f"  {kind}: {count}")
    roomless = ", ".join(str(r.seed) for r in report.no_room[:20])
    print(f"tight seeds without room after healing (tolerated): {len(report.no_room)} {roomless}")
    for r in report.failures:
        print(format_failure(r))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
