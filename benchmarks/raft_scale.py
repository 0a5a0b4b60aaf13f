#!/usr/bin/env python3
"""Raft alone at scale: N pysyncobj voters committing haagent heartbeats, no libvirt, no loop.

    .venv/bin/python benchmarks/raft_scale.py [--nodes 64] [--heartbeat-s 0.2]
                                              [--warmup-seconds 15] [--seconds 30]

Why: 64 real agents do not fit in 2 cores, but the part of an agent whose cost grows with the
cluster's size is its Raft replica: every node commits a heartbeat every `heartbeat_s`, so the
log grows by N / heartbeat_s entries a second, and the leader sends each entry to N - 1
followers. This harness runs exactly that part: one process per node, each with the
production consensus adapter (`haagent.consensus.RaftConsensus`, so the same pysyncobj
configuration, encryption, journal with fsync and port limits) and an asyncio task that
proposes the real `Join` and then a real `Heartbeat` every `heartbeat_s` (each with the
agent's commit timeout), as the agent's lease module does.

Over the measurement window it prints, for the leader and for one follower: Raft traffic from
the kernel's TCP counters (`ss -ti` of that process's connections: bytes and data segments,
after encryption), CPU % of one core and RSS; for the cluster: entries committed per second
(offered: N / heartbeat_s), the heartbeat commit latency p50/p99 and how many heartbeats
ended unknown (no answer within the commit timeout: with leases of 3 s, what costs a node its
lease), term changes, and journal growth per hour. Every process is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import haagent.consensus
from haagent.commands import Heartbeat, Join
from haagent.consensus import RaftConsensus
from haagent.localcluster.cluster import pid_alive
from haagent.localcluster.ports import free_port
from haagent.localcluster.scale import Traffic, cpu_seconds, raft_traffic, rss_mib
from haagent.model import NodeRole
from haagent.ports import OutcomeKind
from haagent.timing import DEFAULT_TIMING

SECRET = "raft-scale-secret-0123456789"


# --- one node (a child process) ----------------------------------------------------------------


def override_conf(overrides: dict[str, Any]) -> None:
    """Experiments only (`--conf`): construct the adapter's SyncObjConf with `overrides` on top
    of the production settings, in this child process."""
    if not overrides:
        return
    original = haagent.consensus.SyncObjConf

    def conf(**kwargs: Any) -> Any:
        return original(**{**kwargs, **overrides})

    haagent.consensus.SyncObjConf = conf  # type: ignore[misc,assignment]


def _conf_item(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--conf wants KEY=JSON, not {text!r}") from None


async def node_main(name: str, addresses: dict[str, str], data_dir: Path, args: Any) -> None:
    t = DEFAULT_TIMING
    override_conf(dict(args.conf or []))
    consensus = RaftConsensus(
        name, addresses, SECRET, data_dir, t.election_timeout_min_s, t.election_timeout_max_s
    )
    consensus.check_storage()
    consensus.start()
    status_file = data_dir / "status.json"
    latencies: list[float] = []
    unknown = 0
    incarnation = f"{name}-{os.getpid()}"
    stop_at = time.monotonic() + args.run_seconds

    async def beat(command: Any, record: bool) -> None:
        nonlocal unknown
        t0 = time.monotonic()
        outcome = await consensus.propose(command, t.commit_timeout_s)
        if record and time.monotonic() < stop_at:
            if outcome.kind is OutcomeKind.UNKNOWN:
                unknown += 1
            else:
                latencies.append(time.monotonic() - t0)

    joined = False
    tasks: set[asyncio.Task[None]] = set()
    next_beat = time.monotonic()
    measuring_from = time.monotonic() + args.warmup_seconds
    while time.monotonic() < stop_at:
        view = consensus.view()
        if not joined:
            joined = name in view.state.nodes
            command: Any = Join(name, incarnation, NodeRole.HYPERVISOR, True, time.time())
        else:
            command = Heartbeat(name, incarnation, view.last_applied)
        task = asyncio.create_task(beat(command, time.monotonic() >= measuring_from))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        status_file.with_suffix(".tmp").write_text(
            json.dumps(
                {
                    "leader": view.is_leader,
                    "term": view.term,
                    "commit_index": view.commit_index,
                    "latencies": latencies[-5000:],
                    "unknown": unknown,
                    "joined": joined,
                }
            )
        )
        status_file.with_suffix(".tmp").replace(status_file)
        next_beat += args.heartbeat_s
        await asyncio.sleep(max(0.0, next_beat - time.monotonic()))
    consensus.stop()


# --- the parent --------------------------------------------------------------------------------


def read_status(data_dir: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((data_dir / "status.json").read_text())
        return doc
    except (OSError, ValueError):
        return None


def wait_joined(dirs: dict[str, Path], timeout_s: float) -> int:
    """Wait until every node committed its Join, at most `timeout_s`; return how many did."""
    deadline = time.monotonic() + timeout_s
    while True:
        joined = sum(1 for d in dirs.values() if (s := read_status(d)) and s["joined"])
        if joined == len(dirs) or time.monotonic() > deadline:
            return joined
        time.sleep(0.5)


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=64)
    p.add_argument("--heartbeat-s", type=float, default=DEFAULT_TIMING.heartbeat_s)
    p.add_argument("--warmup-seconds", type=float, default=15.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--join-timeout", type=float, default=120.0)
    p.add_argument(
        "--conf",
        type=_conf_item,
        action="append",
        help="KEY=JSON: a pysyncobj setting on top of the adapter's (experiments only)",
    )
    p.add_argument("--node", help=argparse.SUPPRESS)  # child mode
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.node:
        spec = json.loads(Path(args.spec).read_text())
        args.run_seconds = spec["run_seconds"]
        asyncio.run(node_main(args.node, spec["addresses"], Path(spec["dirs"][args.node]), args))
        return 0
    return parent(args)


def parent(args: argparse.Namespace) -> int:
    n = args.nodes
    load0 = os.getloadavg()
    names = [f"n{i}" for i in range(1, n + 1)]
    ports = {name: free_port() for name in names}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="haagent-raft-scale-") as tmp:
        dirs = {name: Path(tmp) / name for name in names}
        spec = {
            "addresses": {name: f"127.0.0.1:{port}" for name, port in ports.items()},
            "dirs": {name: str(d) for name, d in dirs.items()},
            "run_seconds": args.warmup_seconds + args.seconds + 120,
        }
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        try:
            for name in names:
                dirs[name].mkdir()
                procs[name] = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--node",
                        name,
                        "--spec",
                        str(spec_file),
                        "--heartbeat-s",
                        str(args.heartbeat_s),
                        "--warmup-seconds",
                        str(args.warmup_seconds),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=open(dirs[name] / "stderr", "wb"),  # noqa: SIM115 - closed by the child's exit
                )
            joined = wait_joined(dirs, args.join_timeout)
            if joined < len(names):
                print(f"only {joined} of {len(names)} nodes joined in {args.join_timeout:.0f} s")
            time.sleep(max(0.0, args.warmup_seconds))
            return measure(args, names, procs, dirs, ports, load0)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                proc.wait()
            assert not any(pid_alive(proc.pid) for proc in procs.values())


def measure(
    args: argparse.Namespace,
    names: list[str],
    procs: dict[str, subprocess.Popen[bytes]],
    dirs: dict[str, Path],
    ports: dict[str, int],
    load0: tuple[float, float, float],
) -> int:
    n = len(names)
    by_pid = {proc.pid: name for name, proc in procs.items()}
    raft_ports = set(ports.values())
    status0 = {name: read_status(d) or {} for name, d in dirs.items()}
    journals = {name: d / "raft.journal" for name, d in dirs.items()}
    sizes = {name: j.stat().st_size for name, j in journals.items()}
    growth = dict.fromkeys(names, 0)
    cpu0 = {name: cpu_seconds(proc.pid) for name, proc in procs.items()}
    traffic0 = raft_traffic(by_pid, raft_ports)
    t0 = time.monotonic()
    while (left := t0 + args.seconds - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        for name, j in journals.items():
            size = j.stat().st_size
            growth[name] += max(0, size - sizes[name])
            sizes[name] = size
    elapsed = time.monotonic() - t0
    traffic1 = raft_traffic(by_pid, raft_ports)
    cpu = {
        name: 100 * (cpu_seconds(proc.pid) - cpu0[name]) / elapsed for name, proc in procs.items()
    }
    rss = {name: rss_mib(proc.pid) for name, proc in procs.items()}
    status1 = {name: read_status(d) or {} for name, d in dirs.items()}
    leaders = [name for name, s in status1.items() if s.get("leader")]
    leader = leaders[0] if leaders else names[0]
    follower = next(name for name in names if name != leader)
    terms0 = [s.get("term", 0) for s in status0.values()]
    terms1 = [s.get("term", 0) for s in status1.values()]
    entries = status1[leader].get("commit_index", 0) - status0[leader].get("commit_index", 0)
    latencies = [x for s in status1.values() for x in s.get("latencies", [])]
    unknown = sum(s.get("unknown", 0) for s in status1.values())
    offered = n / args.heartbeat_s
    print(
        f"raft only, {n} voters, heartbeat every {args.heartbeat_s} s (offered {offered:.0f} "
        f"entries/s), pysyncobj overrides {dict(args.conf or []) or 'none'}, "
        f"{os.cpu_count()} cores, load {' '.join(f'{x:.2f}' for x in load0)} -> "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, window {elapsed:.0f} s"
    )
    print(
        f"  committed {entries / elapsed:.0f} entries/s; heartbeat commit latency p50 "
        f"{quantile(latencies, 0.5) * 1000:.0f} ms p99 {quantile(latencies, 0.99) * 1000:.0f} ms "
        f"over {len(latencies)} (since warm-up), unknown outcomes {unknown}; term changes "
        f"{max(terms1) - min(terms0)}; leaders seen {len(leaders)}"
    )
    for label, name in (("leader", leader), ("follower", follower)):
        t = traffic1.get(name, Traffic()).minus(traffic0.get(name, Traffic()))
        print(
            f"  {label} {name}: CPU {cpu[name]:.0f} % of one core, RSS {rss[name]:.0f} MiB; "
            f"Raft out {t.bytes_out / elapsed / 1024:.0f} KiB/s in "
            f"{t.bytes_in / elapsed / 1024:.0f} KiB/s, data segments out "
            f"{t.segs_out / elapsed:.0f}/s in {t.segs_in / elapsed:.0f}/s; journal "
            f"+{growth[name] / elapsed * 3600 / 2**20:.0f} MiB/h written, "
            f"{sizes[name] / 1024:.0f} KiB at the end"
        )
    others = sorted(cpu[name] for name in names if name != leader)
    print(f"  followers' CPU: median {statistics.median(others):.1f} %, max {others[-1]:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
