"""Power loss, for real: three `haagent run` agents, each on its own power-loss file system.

Every node's data_dir is a FUSE mount of `tests.helpers.powerloss_fs`, which keeps what was
not fsynced in memory and throws it away when the power goes. A power loss of a node is: its
agent is SIGKILLed (by the test, or by itself at an armed point: right after a vote, right
after an acknowledged append, between an append and its fsync, around a snapshot's rename),
its file system is unmounted (losing every unsynced write), mounted again and the agent
restarted. The schedule mixes single cuts and cuts of two of the three nodes at once.

Checked at the end, from what every incarnation of every agent logged outside the file system
(`tests/helpers/powercut/sitecustomize.py`) and from a ClusterWatch:

* no node voted twice in one term (for two different candidates);
* one history: every log index that any agent ever applied carries the same command on every
  node and in every incarnation (a lost committed entry shows up as an index applied once with
  one command and later with another), and after the cluster heals every node has applied
  at least as far as any node had before;
* no guest ever ran on two nodes at once.

The seed is printed; HAAGENT_POWERLOSS_SEED=N replays a schedule (the timing still varies).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from haagent.localcluster.cluster import ClusterPlan, GuestPlan, LocalCluster, local_plan, wait_for
from tests.helpers.cluster_watch import ClusterWatch
from tests.helpers.powerloss import ROOT, PowerLossMount, fuse_usable

pytestmark = pytest.mark.integration

HOOKS = ROOT / "tests" / "helpers" / "powercut"
CHAOS_S = 30.0
COMPACT_EVERY = 60  # entries: ~3 s of heartbeats, so snapshots happen during the chaos


class Events:
    """What the agents logged through the power-cut hook."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def lines(self, node: str) -> list[list[str]]:
        path = self.folder / f"{node}.events"
        if not path.exists():
            return []
        return [line.split() for line in path.read_text().splitlines() if line.strip()]

    def arm(self, node: str, point: str) -> None:
        (self.folder / f"{node}.arm").write_text(point)

    def disarm(self, node: str) -> None:
        (self.folder / f"{node}.arm").unlink(missing_ok=True)

    def applied_max(self, node: str) -> int:
        return max((int(f[1]) for f in self.lines(node) if f[0] == "apply"), default=0)

    def applied_since_last_start(self, node: str) -> int:
        best = 0
        for f in self.lines(node):
            if f[0] == "start":
                best = 0
            elif f[0] == "apply":
                best = max(best, int(f[1]))
        return best


class PowerLab:
    def __init__(self, cluster: LocalCluster, mounts: dict[str, PowerLossMount], seed: int):
        self.cluster = cluster
        self.mounts = mounts
        self.rng = random.Random(seed)
        self.down: dict[str, float] = {}  # node -> when to power it on again
        self.cuts: list[tuple[str, str]] = []  # (node, how)

    def up_nodes(self) -> list[str]:
        return [n for n in self.cluster.nodes() if n not in self.down]

    def cut(self, nodes: list[str], how: str) -> None:
        """SIGKILL the agents, then lose what their file systems did not fsync."""
        for n in nodes:
            pid = self.cluster.agent_pid(n)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        for n in nodes:
            wait_for(f"{n} dead", lambda n=n: self.cluster.agent_pid(n) is None or None, 10.0)
        for n in nodes:
            self.mounts[n].power_loss()
            self.down[n] = time.monotonic() + self.rng.uniform(0.2, 1.5)
            self.cuts.append((n, how))

    def reap_self_cut(self) -> None:
        for n in self.up_nodes():
            if self.cluster.agent_pid(n) is None:
                self.cut([n], "armed")

    def power_on_due(self, force: bool = False) -> None:
        for n, at in sorted(self.down.items()):
            if force or time.monotonic() >= at:
                self.mounts[n].mount()
                del self.down[n]
                self.cluster.start_agent(n)


def converged(cluster: LocalCluster) -> dict[str, Any] | None:
    """Every agent answers with the same leader and a valid lease, every guest is committed
    running and runs on its owner and nowhere else."""
    try:
        docs = {n: cluster.status(n, timeout_s=1.0) for n in cluster.nodes()}
    except Exception:
        return None
    leaders = {d["leader"] for d in docs.values()}
    if len(leaders) != 1 or None in leaders or not all(d["quorum"] for d in docs.values()):
        return None
    ref = docs[next(iter(leaders))]
    for guest, rec in ref["guests"].items():
        if rec["state"] != "running":
            return None
        if [n for n, d in docs.items() if guest in (d["local"] or {})] != [rec["owner"]]:
            return None
    return ref


def test_power_loss_keeps_votes_history_and_single_copies(
    tmp_path: Path,
    make_cluster: Callable[..., LocalCluster],
    watch_cluster: Callable[[LocalCluster], ClusterWatch],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    why = fuse_usable()
    if why:
        pytest.fail(f"the power-loss file system needs FUSE: {why} (scripts/bootstrap)")
    seed = int(os.environ.get("HAAGENT_POWERLOSS_SEED", time.time_ns() % 1_000_000))
    print(f"power-loss seed {seed} (HAAGENT_POWERLOSS_SEED={seed} replays the schedule)")
    events = Events(tmp_path / "events")
    events.folder.mkdir()
    monkeypatch.setenv("HAAGENT_POWERCUT_DIR", str(events.folder))
    monkeypatch.setenv("HAAGENT_POWERCUT_COMPACT", str(COMPACT_EVERY))
    monkeypatch.setenv("HAAGENT_POWERCUT_ROOT", str(ROOT))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(HOOKS), os.environ.get("PYTHONPATH")) if p)
    )
    guests = tuple(GuestPlan(f"g{i}", 256, 10, (f"n{i}",)) for i in (1, 2, 3))
    plan: ClusterPlan = local_plan(3, fence="dummy", guests=guests)
    cluster = make_cluster(plan, start=False)
    mounts = {
        n: PowerLossMount(cluster.run_dir / "state" / n, tmp_path / f"{n}.fs")
        for n in cluster.nodes()
    }
    try:
        for m in mounts.values():
            m.mount()
        watch = watch_cluster(cluster)
        cluster.start()
        lab = PowerLab(cluster, mounts, seed)
        rng = lab.rng
        # Every kind of cut at least once, in a seeded order, then random ones.
        plan_steps = ["majority", "vote", "ack", "append", "snapshot", "one", "majority"]
        rng.shuffle(plan_steps)
        deadline = time.monotonic() + CHAOS_S
        next_step = time.monotonic() + rng.uniform(0.5, 1.5)
        while time.monotonic() < deadline:
            lab.reap_self_cut()
            lab.power_on_due()
            if time.monotonic() >= next_step and not lab.down:
                step = (
                    plan_steps.pop(0)
                    if plan_steps
                    else rng.choice(["majority", "vote", "ack", "append", "snapshot", "one"])
                )
                up = lab.up_nodes()
                if step == "majority":
                    lab.cut(rng.sample(up, 2), "majority")
                elif step == "one":
                    lab.cut([rng.choice(up)], "one")
                else:
                    victim = rng.choice(up)
                    events.arm(victim, step)
                    if step == "vote":
                        # Votes happen in elections: cut another node (often the leader).
                        lab.cut([rng.choice([n for n in up if n != victim])], "one")
                next_step = time.monotonic() + rng.uniform(1.5, 3.0)
            time.sleep(0.05)

        # Heal: nothing armed, everyone up, then one agreed state with every guest once.
        for n in cluster.nodes():
            events.disarm(n)
        lab.reap_self_cut()
        lab.power_on_due(force=True)
        high_water = max(events.applied_max(n) for n in cluster.nodes())
        wait_for("the cluster to converge", lambda: converged(cluster), 40.0)
        wait_for(
            f"every node to apply up to index {high_water} again",
            lambda: (
                all(events.applied_since_last_start(n) >= high_water for n in cluster.nodes())
                or None
            ),
            20.0,
        )
        watch.stop()
    finally:
        cluster.stop()
        for m in mounts.values():
            m.cleanup()

    print("cuts:", lab.cuts)
    armed = [f[1] for n in cluster.nodes() for f in events.lines(n) if f[0] == "cut"]
    print("armed cuts that fired:", armed)
    assert any(how == "majority" for _, how in lab.cuts)

    votes: dict[tuple[str, int], set[str]] = defaultdict(set)
    history: dict[int, set[str]] = defaultdict(set)
    where: dict[tuple[int, str], list[str]] = defaultdict(list)
    for n in cluster.nodes():
        incarnation = 0
        for f in events.lines(n):
            if f[0] == "start":
                incarnation += 1
            elif f[0] == "vote":
                votes[(n, int(f[1]))].add(f[2])
            elif f[0] == "apply":
                history[int(f[1])].add(f[2])
                where[(int(f[1]), f[2])].append(f"{n}#{incarnation}")
    double_votes = {k: sorted(v) for k, v in votes.items() if len(v) > 1}
    diverged = {
        i: {h: where[(i, h)] for h in hs} for i, hs in sorted(history.items()) if len(hs) > 1
    }
    overlaps = {g: watch.overlaps(g) for g in sorted(watch.guests_seen())}
    problems = []
    if double_votes:
        problems.append(f"voted twice in a term (node, term): {double_votes}")
    if diverged:
        first = dict(list(diverged.items())[:3])
        problems.append(
            f"{len(diverged)} log indexes applied with different commands "
            f"(index: command: node#incarnation), first: {first}"
        )
    if any(overlaps.values()):
        problems.append(f"guests on two nodes at once: {overlaps}")
    assert not problems, "\n".join(problems)
