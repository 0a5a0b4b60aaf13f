"""A real-process cluster in network namespaces, and the network faults to throw at it.

Shared by benchmarks/soak.py, benchmarks/nemesis.py and their tests. `netns_plan` puts one
agent in each host namespace of a `NetnsLab` (Raft over the lab's bridge, the API on a unix
socket in the run folder, which no network fault touches). With `fence="ipmi"` every node's
simulated BMC (`ipmi_sim`) listens on the switch's own address inside the switch namespace:
reachable over a host's cable, but not taken down when that host is cut or its firewall drops
everything, as a BMC on a separate management network would be. Its power-off SIGKILLs the
agent (a real power cut), its power-on starts it again.

Faults, each undone by its `heal_*` (all idempotent) or by `heal_network`:

* `lab.cut(i)` / `lab.heal(i)`: host i's cable is pulled (NetnsLab);
* `drop_one_way(lab, i, "in"|"out")`: host i's own firewall drops what it receives or sends
  on eth0, so its peers hear it but it hears nothing (or the reverse);
* `partition(lab, group)`: the switch forwards nothing between `group` and the other hosts.

`inject(lab, cluster, kind, targets)` applies one of KINDS by name (those above, plus SIGSTOP
and SIGKILL of an agent); `heal_all` undoes them all but the power-off.

Every process stays owned by the `LocalCluster` (stopped by pid) and every namespace by the
`NetnsLab` (deleted by `down()`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from haagent.localcluster.cluster import (
    ClusterPlan,
    GuestPlan,
    LocalCluster,
    local_plan,
    pid_alive,
)
from tests.helpers.netns import NetnsLab

__all__ = [
    "KINDS",
    "drop_one_way",
    "heal_all",
    "heal_network",
    "heal_one_way",
    "heal_partition",
    "inject",
    "log_count",
    "netns_plan",
    "nft",
    "partition",
    "spread_guests",
    "wait_settled",
]

_ONE_WAY_TABLE = "nemesis_oneway"
_PARTITION_TABLE = "nemesis_partition"


def spread_guests(n: int, count: int) -> tuple[GuestPlan, ...]:
    """`count` guests, preferring the hypervisors in turn, so every node owns some."""
    return tuple(GuestPlan(f"g{i}", 128, 10, (f"n{(i - 1) % n + 1}",)) for i in range(1, count + 1))


def netns_plan(
    lab: NetnsLab,
    api_dir: Path,
    guests: int,
    profile: str | None = None,
    fence: str = "dummy",
    timing: dict[str, Any] | None = None,
) -> ClusterPlan:
    """One agent per lab host; `fence` is "dummy" (a fence only records a power-off) or
    "ipmi" (fence_ipmilan against a BMC on the lab switch that really powers the node off).
    `profile` picks a timing profile of haagent/timing.py; `timing` overrides single keys."""
    n = len(lab.hosts)
    base = local_plan(n, fence=fence, guests=spread_guests(n, guests), api_unix_dir=api_dir)
    nodes = tuple(
        replace(
            node,
            netns=lab.host(i),
            raft_host=lab.ip(i),
            bmc_host=lab.switch_ip,
            bmc_netns=lab.switch if fence == "ipmi" else None,
        )
        for i, node in enumerate(base.nodes, 1)
    )
    table: dict[str, Any] = {"profile": profile} if profile else {}
    table.update(timing or {})
    return replace(base, nodes=nodes, timing=table)


def nft(ns: str, script: str, check: bool = True) -> None:
    """Load an nft script inside namespace `ns`."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script,
        text=True,
        check=False,
        capture_output=True,
        timeout=10,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"nft in {ns}: {done.stderr.strip()}\n{script}")


def drop_one_way(lab: NetnsLab, i: int, direction: str) -> None:
    """Host i drops every frame it receives ("in") or sends ("out") on its lab link."""
    if direction not in ("in", "out"):
        raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
    hook, match = ("input", "iifname") if direction == "in" else ("output", "oifname")
    nft(
        lab.host(i),
        f"table inet {_ONE_WAY_TABLE} {{\n chain c {{\n"
        f'  type filter hook {hook} priority 0; policy accept; {match} "eth0" drop;\n }}\n}}\n',
    )


def heal_one_way(lab: NetnsLab, i: int) -> None:
    nft(lab.host(i), f"delete table inet {_ONE_WAY_TABLE}\n", check=False)


def partition(lab: NetnsLab, group: Iterable[int], versus: Iterable[int] | None = None) -> None:
    """The switch forwards nothing between the hosts in `group` and those in `versus` (by
    default: all others), both ways. Frames to the switch's own address (the BMCs) still pass:
    they are not forwarded."""
    inside = sorted(set(group))
    outside = sorted(
        set(versus) if versus is not None else set(range(1, len(lab.hosts) + 1)) - set(inside)
    )
    if not inside or not outside:
        raise ValueError("a partition needs hosts on both sides")
    a = ", ".join(f'"p{i}"' for i in inside)
    b = ", ".join(f'"p{i}"' for i in outside)
    nft(
        lab.switch,
        f"table bridge {_PARTITION_TABLE} {{\n chain c {{\n"
        "  type filter hook forward priority 0; policy accept;\n"
        f"  iifname {{ {a} }} oifname {{ {b} }} drop\n"
        f"  iifname {{ {b} }} oifname {{ {a} }} drop\n }}\n}}\n",
    )


def heal_partition(lab: NetnsLab) -> None:
    nft(lab.switch, f"delete table bridge {_PARTITION_TABLE}\n", check=False)


def heal_network(lab: NetnsLab) -> None:
    """Undo every fault above: cables in, no one-way drop, no partition."""
    heal_partition(lab)
    for i in range(1, len(lab.hosts) + 1):
        lab.heal(i)
        heal_one_way(lab, i)


KINDS = ("cut", "partition", "drop_in", "drop_out", "pause", "kill")
"""The faults `inject` knows (tests/helpers and benchmarks/nemesis.py draw from these)."""


def inject(lab: NetnsLab, cluster: LocalCluster, kind: str, targets: tuple[str, ...]) -> None:
    """Fault `kind` of KINDS on `targets` (node names; all of a partition's minority side):
    "pause" is SIGSTOP of the agent, "kill" its SIGKILL (a power loss without the BMC)."""
    index = {n: i for i, n in enumerate(cluster.nodes(), 1)}
    match kind:
        case "cut":
            lab.cut(index[targets[0]])
        case "partition":
            partition(lab, [index[t] for t in targets])
        case "drop_in" | "drop_out":
            drop_one_way(lab, index[targets[0]], kind.removeprefix("drop_"))
        case "pause" | "kill":
            pid = cluster.agent_pid(targets[0])
            if pid is not None:
                os.kill(pid, signal.SIGSTOP if kind == "pause" else signal.SIGKILL)
        case _:
            raise ValueError(f"unknown fault {kind!r}")


def heal_all(lab: NetnsLab, cluster: LocalCluster) -> None:
    """Undo every network fault and SIGCONT every live agent (powering on is up to the caller:
    it must wait for pending fences)."""
    heal_network(lab)
    for node in cluster.nodes():
        pid = cluster.agent_pid(node)
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGCONT)


def log_count(cluster: LocalCluster, pattern: str) -> int:
    """Lines matching `pattern` in all agents' logs."""
    rx = re.compile(pattern)
    total = 0
    for node in cluster.nodes():
        try:
            text = cluster.log_file(node).read_text(errors="replace")
        except OSError:
            continue
        total += sum(1 for line in text.splitlines() if rx.search(line))
    return total


def wait_settled(cluster: LocalCluster, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Wait until every node holds a lease and all name the same leader; return their status
    documents. Raises RuntimeError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            docs = [cluster.status(n) for n in cluster.nodes()]
        except (OSError, ValueError):
            docs = []
        if docs and all(d["quorum"] for d in docs) and len({d["leader"] for d in docs}) == 1:
            return docs
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster did not settle within {timeout_s:g} s")
        time.sleep(0.2)
