#!/usr/bin/env python3
"""What durability costs a commit, on this machine's disk.

    .venv/bin/python benchmarks/durability.py [--commits 300] [--dir DIR]

Three RaftConsensus replicas over loopback in this process (as tests/unit/test_consensus.py),
their data under DIR (default: a temporary folder on the disk that holds this checkout). For
each mode it proposes --commits heartbeats one after the other and prints the median and p95
of propose-to-accepted, and how many fsync calls the whole cluster made per commit:

* durable: the journal (haagent/vendor/pysyncobj/journal.py), fsynced before every ack;
* memory: no journal at all (persist=False), the lower bound.

Then the raw cost of one small append + fsync on DIR. fsync latency depends on the disk and
on whatever else writes to it: run it a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from haagent.commands import Heartbeat, Join
from haagent.consensus import RaftConsensus
from haagent.localcluster.ports import free_port
from haagent.model import NodeRole
from haagent.ports import OutcomeKind

SECRET = "bench-secret-0123456789"
NODES = ("n1", "n2", "n3")


class FsyncCounter:
    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._orig = os.fsync

    def __enter__(self) -> FsyncCounter:
        def counted(fd: int) -> None:
            t0 = time.perf_counter()
            self._orig(fd)
            self.seconds += time.perf_counter() - t0
            self.count += 1

        os.fsync = counted
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync = self._orig


async def run_mode(root: Path, persist: bool, commits: int) -> tuple[list[float], FsyncCounter]:
    addresses = {n: f"127.0.0.1:{free_port()}" for n in NODES}
    nodes = {n: RaftConsensus(n, addresses, SECRET, root / n, persist=persist) for n in NODES}
    for c in nodes.values():
        c.start()
    try:
        deadline = time.monotonic() + 15
        while not any(c.view().is_leader for c in nodes.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("no leader")
            await asyncio.sleep(0.01)
        for n, c in nodes.items():
            outcome = await c.propose(Join(n, f"{n}-a", NodeRole.HYPERVISOR, True, 0.0), 5)
            assert outcome.kind is OutcomeKind.ACCEPTED, outcome
        follower = next(c for c in nodes.values() if not c.view().is_leader)
        name = follower.node
        latencies = []
        with FsyncCounter() as fsyncs:
            for _ in range(commits):
                t0 = time.perf_counter()
                outcome = await follower.propose(Heartbeat(name, f"{name}-a"), 5)
                latencies.append(time.perf_counter() - t0)
                assert outcome.kind is OutcomeKind.ACCEPTED, outcome
        return latencies, fsyncs
    finally:
        for c in nodes.values():
            c.stop()


def raw_fsync(folder: Path, n: int = 200) -> list[float]:
    path = folder / "raw-fsync"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 120)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return times


def ms(values: list[float], q: float) -> str:
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.2f} ms"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="haagent-durability-", dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"{args.commits} sequential commits, 3 replicas on loopback, data in {root}")
        # Alternate the modes in rounds so that a busy machine slows both alike.
        results: dict[str, list[float]] = {"durable": [], "memory": []}
        fsyncs, fsync_s = 0, 0.0
        rounds = 3
        for r in range(rounds):
            for mode, persist in (("durable", True), ("memory", False)):
                lat, counter = await run_mode(root / f"{mode}{r}", persist, args.commits // rounds)
                results[mode] += lat
                if persist:
                    fsyncs += counter.count
                    fsync_s += counter.seconds
        for mode, lat in results.items():
            print(f"  {mode:8s} commit median {ms(lat, 0.5)}  p95 {ms(lat, 0.95)}")
        n = len(results["durable"])
        print(
            f"  durable: {fsyncs / n:.1f} fsync calls per commit over the 3 nodes (in parallel on "
            f"different nodes), {fsync_s / n * 1000:.2f} ms of fsync per commit summed over them"
        )
        raw = raw_fsync(root)
        print(f"  raw append+fsync on this disk: median {ms(raw, 0.5)}  p95 {ms(raw, 0.95)}")


if __name__ == "__main__":
    asyncio.run(main())
