"""Swarm mode: random fault schedules against random clusters, replayable by seed.

Each seed draws a `Scenario` (the same structure a .scn file parses into): a cluster of 3 to 7
voters (sometimes two hypervisors and a witness, sometimes a witness among more hypervisors),
guests with random memory, priorities, preferences, allowed nodes and anti-affinity groups,
agent settings and simulator knobs (message loss, stale leaders, guests lost on agent restart,
hosts without a hardware watchdog, watchdog fencing, slow commits, followers that apply late,
commands committed twice, fast and slow clocks), then 1 to 10 faults from the scenario
vocabulary, slow starts that complete late, and the faults of `haagent.sim.coverage` (snapshot
decode failures, config drift, replica corruption, admin decisions re-delivered late, host
network links lost). At the end everything heals: the network is reconnected, links come
back, hung agents resume, hosts are powered on (twice: a pending fence may switch one off as
it boots), maintenance ends, disabled guests are enabled. The run is checked by
`InvariantChecker` after every step, and every wanted guest must run again within
`HEAL_BOUND_S` of the last healing step.

A seed that violates an invariant is shrunk: faults are removed one at a time while the run
still violates an invariant of the same kind, so the report shows a short schedule (a scenario
file, replayable with `haagent simulate --scenario FILE`) and a shortened trace.

Same seed, same schedule, same run: the schedule comes from its own `random.Random`, the run
from the World's, and workers only change which process runs a seed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TextIO

from haagent.model import FenceMethod, GuestSpec, Raid1RunOn, StorageKind
from haagent.sim.coverage import HEALING_LINE, coverage_faults, lost_nodes
from haagent.sim.invariants import shorten_trace
from haagent.sim.scenario import LEADER, Scenario, Step, run_scenario, sim_legs

HEAL_BOUND_S = 45.0
"""After the last healing step, every enabled guest (not in error) runs again within this:
boot (3 s), rejoin, failure detection (1.4 s), fencing with retries (a scripted hang costs
the fence timeout, 5 s here) and the starts, with a wide margin."""

REPOWER_S = 10.0
"""Healing powers every host on, and again this long after: a fence still pending when the
network healed may switch a host off while it boots (3 s) or just after it rejoined."""


SETTLE_S = 3.0
"""A healed cluster must stay healed this long before a seed ends early."""

FAULT_WEIGHTS: dict[str, int] = {
    "power_off": 4,
    "power_on": 2,
    "cut": 3,
    "heal": 2,
    "partition": 3,
    "drop": 2,
    "deaf": 2,
    "stall": 1,
    "crash": 2,
    "fail_starts": 2,
    "fence_script": 3,
    "clock_jump": 1,
    "hang": 3,
    "resume": 2,
    "restart": 2,
    "shutdown": 1,
    "disable": 1,
    "enable": 1,
    "maintenance": 2,
    "resend": 1,
}
RESEND_TYPES = (
    "join",
    "guest_starting",
    "guest_running",
    "guest_stopped",
    "assign_guests",
    "declare_failed",
    "fence_started",
    "fence_result",
)
FENCE_ATTEMPTS = ("ok", "fail", "fail", "hang", "fail/ok", "hang/ok", "fail/fail")


NO_ROOM = (
    "last unplaced: needs",
    "last unplaced: anti-affinity",
    # Only with a node out for good (tight seeds have no DRBD guest): it held the only
    # up-to-date replica, and an outdated one is never promoted (rule 5).
    "last unplaced: only outdated replicas are up",
    # The raid1 counterpart: the node out for good holds the only fresh leg, and a guest never
    # starts from stale legs alone (issue 10).
    "(stale) reachable; fresh leg",
)


def no_room(
    violation: str, lost: frozenset[str] = frozenset(), hypervisors: frozenset[str] = frozenset()
) -> bool:
    """A guest left unplaced after healing for lack of room (tolerated in tight seeds and in
    seeds where a node is out for good). `lost`: the nodes out for good; a DRBD guest its up
    replica host gave up on (its disk outdated) that waits for the other replica host is
    tolerated when that host is one of them (swarm seed 1666: n2, out for good, held the only
    up-to-date replica; an outdated one is never promoted, rule 5), and a real finding when it
    waits for any other node."""
    if "not healed" not in violation:
        return False
    waiting = _WAITING_FOR.search(violation)
    if waiting is not None:
        return set(waiting.group(1).split(", ")) <= lost
    # Every node but the one out for good gave up on the guest after the start failures the
    # seed drew (swarm seed 6922): by design only an admin's `guest cleanup` lets them try
    # again, and the swarm has no admin. Any other node of `hypervisors` left is a finding.
    gave_up = _GAVE_UP_ALONE.search(violation)
    if gave_up is not None:
        return bool(lost) and hypervisors - set(gave_up.group(1).split(", ")) <= lost
    return any(r in violation for r in NO_ROOM)


_WAITING_FOR = re.compile(r"last unplaced: failed on [^;]*; waiting for replica host ([\w, -]+)$")
_GAVE_UP_ALONE = re.compile(
    r"gave up on it: ([\w, -]+); last unplaced: failed on [^;]*; no other node allowed$"
)


@dataclass(frozen=True)
class SeedResult:
    """The outcome of one seed. `trace` (shortened, JSON lines) and `scenario` (the shrunk
    schedule as a scenario file) are filled only when there are violations."""

    seed: int
    violations: tuple[str, ...]
    no_room: tuple[str, ...] = ()  # tight seeds: guests left without room after healing
    trace: tuple[str, ...] = ()
    scenario: str = ""
    faults: int = 0  # healing steps included
    healing: int = 0  # of which healing steps
    shrunk_faults: int = 0
    simulated_s: float = 0.0
    events: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class SwarmReport:
    seeds: range
    workers: int
    wall_s: float
    simulated_s: float
    results: list[SeedResult] = field(default_factory=list)

    @property
    def failures(self) -> list[SeedResult]:
        return [r for r in self.results if not r.ok]

    @property
    def no_room(self) -> list[SeedResult]:
        return [r for r in self.results if r.no_room]

    @property
    def schedules_per_s(self) -> float:
        return len(self.results) / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> str:
        first, last = self.seeds.start, self.seeds.stop - 1
        return (
            f"swarm: {len(self.results)} seeds ({first}..{last}), {self.workers} worker(s), "
            f"{self.wall_s:.1f} s: {self.schedules_per_s:.1f} schedules/s, "
            f"{self.simulated_s:,.0f} simulated s; violations: {len(self.failures)} seeds; "
            f"tight seeds that left a guest without room: {len(self.no_room)}"
        )


# -- schedules ----------------------------------------------------------------------------------


def generate(seed: int) -> Scenario:
    """The random cluster and fault schedule of `seed` (deterministic)."""
    return draw(seed)[0]


def draw(seed: int) -> tuple[Scenario, bool]:
    """`seed`'s scenario, and whether a guest left without room after healing is tolerated:
    its memory is tight, or a node is out for good (haagent.sim.coverage).

    Roomy (three seeds in four): every node could hold every guest, so once everything heals
    each guest fits somewhere whatever the layout the faults left behind, and every enabled
    guest must run. Tight: the guests fill up to half of the memory (and a reference placement
    fits them), so faults leave guests without room; placement is greedy and the layout after
    the faults is arbitrary, so a guest the leader reports unplaced for lack of room (memory,
    anti-affinity) is tolerated after healing. Every safety invariant holds in both.
    """
    rng = random.Random(f"haagent-swarm-{seed}")
    if rng.random() < 0.2:
        hypervisors, witnesses = 2, 1
    else:
        total = rng.randint(3, 7)
        witnesses = 1 if total >= 4 and rng.random() < 0.25 else 0
        hypervisors = total - witnesses
    sc = Scenario(name=f"swarm-{seed}", seed=seed)
    sc.nodes = [f"n{i}" for i in range(1, hypervisors + 1)]
    sc.witnesses = ["w1"] if witnesses else []
    everyone = sc.nodes + sc.witnesses

    if rng.random() < 0.5:
        size = rng.choice([2048, 4096, 8192])
        memory = dict.fromkeys(sc.nodes, size)
    else:
        memory = {n: rng.choice([2048, 4096, 8192]) for n in sc.nodes}
    sc.memory = memory
    for n in sc.nodes:
        if rng.random() < 0.2:
            sc.fence[n] = FenceMethod.WATCHDOG
    # Power levels that end with a watchdog level (the 10th-floor case). Drawn from a random
    # of its own, so every other draw of a seed stays what it was before this existed.
    level_rng = random.Random(f"haagent-swarm-level-{seed}")
    for n in sc.nodes:
        if n not in sc.fence and level_rng.random() < 0.25:
            sc.fence[n] = FenceMethod.AGENT
            sc.watchdog_level.add(n)
    sc.watchdog_timeout_s = rng.choice([2.0, 5.0, 5.0, 10.0])
    tight = rng.random() < 0.25
    sc.guests = _guests(rng, sc.nodes, memory, tight)

    sc.settings = {
        "max_concurrent_starts": rng.choice([1, 2, 4]),
        "max_start_failures": rng.choice([2, 3]),
        "failure_reset_s": rng.choice([600.0, 600.0, 10.0, 30.0]),
        "max_relocations": rng.choice([1, 2]),
        "fence_timeout_s": 5.0,
    }
    options: dict[str, object] = {}
    drop = rng.choice([0.0, 0.0, 0.0, 0.01, 0.03])
    if drop:
        options["drop_probability"] = drop
    if rng.random() < 0.2:
        options["keep_guests_on_agent_restart"] = False
    if rng.random() < 0.3:
        options["stale_leader_s"] = rng.choice([2.0, 10.0])
    if FenceMethod.WATCHDOG not in sc.fence.values() and rng.random() < 0.2:
        options["hardware_watchdog"] = False
    if rng.random() < 0.2:
        # Slow followers: a node may apply a committed entry up to 0.3 s late (stale reads).
        options["apply_delay_s"] = (0.0005, rng.choice([0.05, 0.3]))
    if rng.random() < 0.2:
        options["commit_delay_s"] = (0.001, rng.choice([0.05, 0.2]))
    if rng.random() < 0.2:
        options["drift_ppm"] = rng.choice([1000.0, 5000.0])
    if rng.random() < 0.2:
        options["duplicate_probability"] = rng.choice([0.02, 0.1])
    sc.options = options

    sc.faults = _faults(rng, sc, everyone)
    _acting_faults(seed, sc)
    _migrations(seed, sc)
    _raid1_guest(seed, sc, tight)
    _admin_faults(seed, sc)
    _drbd_faults(seed, sc)
    lost = coverage_faults(seed, sc)  # a node out for good: capacity and replicas lost
    sc.heal_bound_s = HEAL_BOUND_S
    sc.description = (
        f"swarm seed {seed}: {hypervisors} hypervisors, {witnesses} witness, "
        f"{len(sc.guests)} guests ({'tight' if tight else 'roomy'} memory"
        f"{', a node out for good' if lost else ''}), "
        f"{len(sc.faults)} steps (the last ones heal everything)"
    )
    return sc, tight or lost


def _raid1_guest(seed: int, sc: Scenario, tight: bool) -> None:
    """Sometimes one guest mirroring two legs held by two of the hypervisors (guest RAID1:
    never a start from stale legs only, never two writers on one leg). Drawn from a random
    of its own and added after the faults were drawn, so every other draw of a seed stays
    what it was before this existed (the faults never name it)."""
    raid1_rng = random.Random(f"haagent-swarm-raid1-{seed}")
    if tight or len(sc.nodes) < 2 or raid1_rng.random() >= 0.3:
        return
    holders = sorted(raid1_rng.sample(sc.nodes, 2))
    name = f"g{len(sc.guests) + 200}"
    any_node = len(sc.nodes) >= 3 and raid1_rng.random() < 0.3
    sc.guests.append(
        GuestSpec(
            name,
            name,
            256,
            preferred_nodes=tuple(holders[:1]),
            storage=StorageKind.RAID1,
            legs=sim_legs(name, holders),
            raid1_run_on=Raid1RunOn.ANY if any_node else Raid1RunOn.HOLDERS,
        )
    )


def _acting_faults(seed: int, sc: Scenario) -> None:
    """Slow starts (some past `start_timeout_s`: they complete late) and watchdog devices
    that round their timeout up (issue 8 items 5 and 10). Drawn from a random of their own,
    so every other draw of a seed stays what it was before these existed."""
    act_rng = random.Random(f"haagent-swarm-act-{seed}")
    if act_rng.random() < 0.25:
        sc.watchdog_timeout_s += 0.5  # asked for 2.5 s, a device arms 3 s
        sc.options["watchdog_round_up"] = True
    if not sc.guests or act_rng.random() >= 0.3:
        return
    sc.settings["start_timeout_s"] = 5.0
    faults = [f for f in sc.faults if f.line < HEALING_LINE]
    healing = [f for f in sc.faults if f.line >= HEALING_LINE]
    last = faults[-1].t if faults else 1.0
    for _ in range(act_rng.randint(1, 3)):
        t = round(act_rng.uniform(0.0, last), 3)
        seconds = act_rng.choice([0.5, 2.0, 8.0, 20.0])  # past 5 s: unknown, completes late
        args = (act_rng.choice(sc.nodes), act_rng.choice(sc.guests).name, str(seconds))
        faults.append(Step(t, "slow_start", args))
    faults.sort(key=lambda f: f.t)
    numbered = [replace(f, line=i) for i, f in enumerate(faults, start=1)]
    sc.faults = numbered + healing


def _drbd_faults(seed: int, sc: Scenario) -> None:
    """What real DRBD 8.4 does that the FakeDrbd can play (issue 9 item 7): a fence-peer
    handler that fails (exit 1: I/O stays frozen), a disk an admin outdated, an events2 that
    dies (unknown replica state until the watcher restarts it) or stalls (a late view). Only
    for a seed with a DRBD guest, drawn from a random of its own so every other draw of a seed
    stays what it was; the healing repairs the handlers."""
    drbd = [g for g in sc.guests if g.storage is StorageKind.DRBD]
    drbd_rng = random.Random(f"haagent-swarm-drbd-{seed}")
    if not drbd or drbd_rng.random() >= 0.6:
        return
    faults = [f for f in sc.faults if f.line < HEALING_LINE]
    healing = [f for f in sc.faults if f.line >= HEALING_LINE]
    last = faults[-1].t if faults else 1.0
    heal_t = healing[0].t if healing else last + 1.0
    broken: set[str] = set()
    for _ in range(drbd_rng.randint(1, 3)):
        guest = drbd_rng.choice(drbd)
        node = drbd_rng.choice(guest.replica_nodes)
        t = round(drbd_rng.uniform(0.0, last), 3)
        kind = drbd_rng.choice(["drbd_handler", "drbd_outdate", "drbd_events2", "drbd_events2"])
        if kind == "drbd_handler":
            broken.add(node)
            args: tuple[str, ...] = (node, "broken")
        elif kind == "drbd_outdate":
            args = (node, guest.name)
        else:
            how = drbd_rng.choice(["dies", "stalls"])
            args = (node, how, str(drbd_rng.choice([0.5, 2.0, 5.0])))
        faults.append(Step(t, kind, args))
    faults.sort(key=lambda f: f.t)
    numbered = [replace(f, line=i) for i, f in enumerate(faults, start=1)]
    repairs = [Step(heal_t, "drbd_handler", (n, "ok")) for n in sorted(broken)]
    start = len(healing)
    extra = [replace(f, line=HEALING_LINE + start + i) for i, f in enumerate(repairs)]
    sc.faults = numbered + healing + extra


def _migrations(seed: int, sc: Scenario) -> None:
    """Live migrations (issue 11): in some seeds every hypervisor gets a migration URI (so
    maintenance evacuates by live migration) and an admin migrates guests at random times,
    some of them scripted to fail or to outlast `migration_timeout_s`, while the other faults
    happen. Drawn from a random of their own, so every other draw of a seed stays the same."""
    mig_rng = random.Random(f"haagent-swarm-mig-{seed}")
    if not sc.guests or mig_rng.random() >= 0.3:
        return
    sc.migration_uri = list(sc.nodes)
    sc.settings["migration_timeout_s"] = 3.0
    faults = [f for f in sc.faults if f.line < HEALING_LINE]
    healing = [f for f in sc.faults if f.line >= HEALING_LINE]
    last = faults[-1].t if faults else 1.0
    for _ in range(mig_rng.randint(1, 4)):
        t = round(mig_rng.uniform(1.0, max(1.0, last)), 3)
        guest = mig_rng.choice(sc.guests).name
        if mig_rng.random() < 0.3:
            what = mig_rng.choice(["fail", "0.2", "5"])  # 5 s: past the timeout, aborted
            faults.append(Step(t - 0.001, "migrate_fault", (mig_rng.choice(sc.nodes), guest, what)))
        faults.append(Step(t, "migrate", (guest, mig_rng.choice(sc.nodes))))
    faults.sort(key=lambda f: f.t)
    numbered = [replace(f, line=i) for i, f in enumerate(faults, start=1)]
    sc.faults = numbered + healing


def _admin_faults(seed: int, sc: Scenario) -> None:
    """The admin verbs of issue 12 part 5 (disarm, freeze/thaw, move, cleanup) among the
    faults of 30 % of the seeds. Drawn from a random of their own, so every other draw of a
    seed stays what it was before they existed. A frozen node is thawed with the healing (a
    frozen node's guests recover only after its thaw); a disarm ends by itself."""
    rng = random.Random(f"haagent-swarm-admin-{seed}")
    if not sc.guests or rng.random() >= 0.3:
        return
    faults = [f for f in sc.faults if f.line < HEALING_LINE]
    healing = [f for f in sc.faults if f.line >= HEALING_LINE]
    last = faults[-1].t if faults else 1.0
    heal_t = healing[0].t if healing else last
    frozen: set[str] = set()
    for _ in range(rng.randint(1, 3)):
        t = round(rng.uniform(0.0, last), 3)
        kind = rng.choice(["disarm", "freeze", "move", "cleanup"])
        if kind == "disarm":
            faults.append(Step(t, "disarm", (str(rng.choice([2.0, 5.0, 15.0])),)))
        elif kind == "freeze":
            node = rng.choice(sc.nodes)
            frozen.add(node)
            faults.append(Step(t, "freeze", (node,)))
        elif kind == "move":
            guest = rng.choice(sc.guests).name
            faults.append(Step(t, "move", (guest, rng.choice(sc.nodes))))
        else:
            faults.append(Step(t, "cleanup", (rng.choice(sc.guests).name,)))
    healing += [Step(heal_t, "thaw", (n,)) for n in sorted(frozen)]
    faults.sort(key=lambda f: f.t)
    numbered = [replace(f, line=i) for i, f in enumerate(faults, start=1)]
    sc.faults = numbered + [replace(f, line=HEALING_LINE + i) for i, f in enumerate(healing)]


def _guests(
    rng: random.Random, nodes: list[str], memory: dict[str, int], tight: bool
) -> list[GuestSpec]:
    # Tight: a guest is kept only if a reference placement using at most half of every node's
    # memory, with no two guests of a group on one node, still has room for it. Roomy: the
    # guests together fit on the smallest node.
    room = {n: memory[n] // 2 for n in nodes}
    total_room = min(memory.values())
    groups_on: dict[str, set[str]] = {n: set() for n in nodes}
    guests: list[GuestSpec] = []
    for i in range(1, rng.randint(1, min(12, 3 * len(nodes))) + 1):
        allowed: tuple[str, ...] = ()
        if len(nodes) >= 3 and rng.random() < 0.1:
            allowed = tuple(sorted(rng.sample(nodes, rng.randint(2, len(nodes) - 1))))
        pool = list(allowed or nodes)
        mem = rng.choice([256, 512, 1024, 2048])
        prefer = tuple(rng.sample(pool, rng.randint(0, min(2, len(pool)))))
        group = rng.choice(["a", "b"]) if not allowed and rng.random() < 0.3 else ""
        if tight:
            fits = [n for n in pool if room[n] >= mem and group not in groups_on[n]]
            if not fits:
                continue
            home = max(fits, key=lambda n: (room[n], n))
            room[home] -= mem
            if group:
                groups_on[home].add(group)
        else:
            members = sum(1 for g in guests if group and g.anti_affinity == group)
            if mem > total_room or members >= len(nodes):
                continue
            total_room -= mem
        guests.append(
            GuestSpec(
                name=f"g{i}",
                domain=f"g{i}",
                memory_mib=mem,
                priority=rng.choice([0, 0, 1, 2, 3]),
                preferred_nodes=prefer,
                allowed_nodes=allowed,
                anti_affinity=group,
            )
        )
    if not guests:
        guests.append(GuestSpec("g1", "g1", 256))
    if not tight and len(nodes) >= 2 and rng.random() < 0.3:
        # One guest on DRBD between two of the hypervisors (data before compute, rule 5).
        replicas = tuple(sorted(rng.sample(nodes, 2)))
        name = f"g{len(guests) + 100}"
        guests.append(
            GuestSpec(
                name,
                name,
                256,
                preferred_nodes=replicas[:1],
                storage=StorageKind.DRBD,
                replica_nodes=replicas,
                resource=f"r-{name}",
            )
        )
    return guests


def _faults(rng: random.Random, sc: Scenario, everyone: list[str]) -> list[Step]:
    kinds = list(FAULT_WEIGHTS)
    weights = [FAULT_WEIGHTS[k] for k in kinds]
    guests = [g.name for g in sc.guests]
    steps: list[Step] = []
    t = rng.uniform(0.5, 6.0)
    maintenance: set[str] = set()
    disabled: set[str] = set()

    def node(allow_leader: bool = True) -> str:
        if allow_leader and rng.random() < 0.2:
            return LEADER
        return rng.choice(everyone)

    for _ in range(rng.randint(1, 10)):
        kind = rng.choices(kinds, weights)[0]
        args: tuple[str, ...]
        if kind in ("power_off", "cut", "hang", "restart", "shutdown", "stall"):
            args = (node(),)
        elif kind in ("power_on", "resume"):
            args = (node(allow_leader=False),)
        elif kind == "heal":
            args = () if rng.random() < 0.5 else (node(allow_leader=False),)
        elif kind == "partition":
            shuffled = everyone[:]
            rng.shuffle(shuffled)
            k = rng.randint(1, len(shuffled) - 1)
            args = ("|".join([",".join(shuffled[:k]), ",".join(shuffled[k:])]),)
        elif kind == "drop":
            a, b = rng.sample(everyone, 2)
            args = (a, b)
        elif kind == "deaf":
            args = (LEADER,)
        elif kind in ("crash", "disable", "enable"):
            guest = rng.choice(guests)
            (disabled.add if kind == "disable" else disabled.discard)(guest)
            args = (guest,)
        elif kind == "fail_starts":
            args = (rng.choice(sc.nodes), rng.choice(guests), str(rng.randint(1, 4)))
        elif kind == "fence_script":
            attempts = [rng.choice(FENCE_ATTEMPTS) for _ in range(rng.randint(1, 3))]
            args = (rng.choice(sc.nodes), ",".join(attempts))
        elif kind == "resend":
            args = (rng.choice(everyone), rng.choice(RESEND_TYPES))
        elif kind == "clock_jump":
            args = (rng.choice(everyone), str(rng.choice([3600, 30, -30, -3600])))
        else:  # maintenance
            target = rng.choice(sc.nodes)
            on = target not in maintenance
            (maintenance.add if on else maintenance.discard)(target)
            args = (target, "on" if on else "off")
        steps.append(Step(round(t, 3), kind, args))
        t += rng.uniform(0.1, 6.0)
    # Heal everything; power on again once fences still pending at healing time are done
    # (a fence can switch off a host while it boots).
    t = round(t + rng.uniform(0.5, 8.0), 3)
    heal = [Step(t, "heal", ())]
    heal += [Step(t, "resume", (n,)) for n in everyone]
    heal += [Step(t, "power_on", (n,)) for n in everyone]
    heal += [Step(t, "maintenance", (n, "off")) for n in sorted(maintenance)]
    heal += [Step(t, "enable", (g,)) for g in sorted(disabled)]
    heal += [Step(round(t + REPOWER_S, 3), "power_on", (n,)) for n in everyone]
    numbered = [replace(s, line=i) for i, s in enumerate(steps, start=1)]
    return numbered + [replace(s, line=HEALING_LINE + i) for i, s in enumerate(heal)]


def healing_steps(sc: Scenario) -> int:
    """How many of the scenario's faults are the final healing (never removed by shrinking)."""
    return sum(1 for s in sc.faults if s.line >= HEALING_LINE)


# -- running ------------------------------------------------------------------------------------


def run_seed(seed: int, shrink: bool = True) -> SeedResult:
    """Run one seed; on a violation, shrink its schedule and keep a shortened trace."""
    sc, tight = draw(seed)
    result = run_scenario(sc, settle_s=SETTLE_S)
    unknown, room = classify(result.violations, tight, lost_nodes(sc), frozenset(sc.nodes))
    base = SeedResult(
        seed,
        unknown,
        no_room=room,
        faults=len(sc.faults),
        healing=healing_steps(sc),
        simulated_s=result.world.now,
        events=len(result.world.trace),
    )
    if not unknown:
        return base
    small = shrink_scenario(sc, unknown[0], tight) if shrink else sc
    small_result = run_scenario(small, settle_s=SETTLE_S)
    checker = small_result.checker
    if not small_result.violations:  # cannot happen (shrinking keeps a violation); be safe
        small, checker = sc, result.checker
    trace = shorten_trace(checker.world.trace, checker.first_violation_index)
    return replace(
        base,
        trace=tuple(trace),
        scenario=small.to_text(),
        shrunk_faults=len(small.faults),
    )


def classify(
    violations: Sequence[str],
    tight: bool,
    lost: frozenset[str] = frozenset(),
    hypervisors: frozenset[str] = frozenset(),
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split violations into (real ones, tolerated lack of room in a tight seed: a cluster
    drawn with too little memory for its guests cannot run them all, whatever the agent does,
    or one that lost a node for good, `lost`, of its `hypervisors`)."""
    room = tuple(v for v in violations if tight and no_room(v, lost, hypervisors))
    return tuple(v for v in violations if v not in room), room


VIOLATION_KINDS = (
    "two running copies",
    "went back",
    "without a new generation",
    "without a committed fence",
    "the watchdog deadline",
    "older than",
    "without a committed guest_starting",
    "after its lease ended",
    "not healed",
)


def violation_kind(violation: str) -> str:
    """Which invariant a violation message is about (for shrinking: same kind, same bug)."""
    return next((k for k in VIOLATION_KINDS if k in violation), violation)


def shrink_scenario(
    sc: Scenario, violation: str, tight: bool = False, max_runs: int = 80
) -> Scenario:
    """Remove faults (never the final healing steps) and message loss while the run still
    violates an invariant of the same kind as `violation` (not a known or tolerated one)."""
    kind = violation_kind(violation)
    runs = 0

    def still_fails(candidate: Scenario) -> bool:
        nonlocal runs
        runs += 1
        r = run_scenario(candidate, settle_s=SETTLE_S)
        real = classify(r.violations, tight, lost_nodes(candidate), frozenset(candidate.nodes))[0]
        return any(violation_kind(v) == kind for v in real)

    current = sc
    if current.options.get("drop_probability"):
        calmer = replace(current, options={**current.options, "drop_probability": 0.0})
        if still_fails(calmer):
            current = calmer
    changed = True
    while changed and runs < max_runs:
        changed = False
        removable = [i for i, f in enumerate(current.faults) if f.line < HEALING_LINE]
        for i in removable:
            if runs >= max_runs:
                break
            faults = current.faults[:i] + current.faults[i + 1 :]
            candidate = replace(current, faults=faults)
            if still_fails(candidate):
                current = candidate
                changed = True
                break
    return replace(
        current,
        description=f"{sc.description}; shrunk to {len(current.faults)} steps: {violation}",
    )


def run_swarm(seeds: range, workers: int = 1) -> SwarmReport:
    """Run every seed (in `workers` processes); results come back in seed order."""
    started = time.perf_counter()
    if workers <= 1 or len(seeds) < 2:
        results = [run_seed(s) for s in seeds]
    else:
        ctx = multiprocessing.get_context("fork")
        chunk = max(1, min(16, len(seeds) // (workers * 8)))
        with ctx.Pool(workers) as pool:
            results = list(pool.imap_unordered(run_seed, seeds, chunksize=chunk))
        results.sort(key=lambda r: r.seed)
    wall = time.perf_counter() - started
    return SwarmReport(
        seeds=seeds,
        workers=max(1, workers),
        wall_s=wall,
        simulated_s=sum(r.simulated_s for r in results),
        results=results,
    )


# -- command line -------------------------------------------------------------------------------


def swarm_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="haagent simulate --swarm",
        description="Run random fault schedules in the deterministic simulator.",
    )
    p.add_argument("--swarm", action="store_true", help="swarm mode (accepted for symmetry)")
    p.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument(
        "--verbose", action="store_true", help="print each seed's schedule and full trace"
    )
    return p


def swarm_main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """`haagent simulate --swarm --seeds N [--start S] [--workers W] [--verbose]`.

    `argv` holds the arguments after `simulate` (`--swarm` may be included). Prints the
    figures and every violation with its seed and how to replay it. Exit status 0 when no seed
    violated an invariant, 1 otherwise, 2 for bad usage.
    """
    args = swarm_parser().parse_args(argv)
    return swarm_cli(args.seeds, args.start, args.workers, args.verbose, out)


def swarm_cli(
    seeds: int, start: int = 0, workers: int = 1, verbose: bool = False, out: TextIO | None = None
) -> int:
    """The body of `swarm_main`, for a caller that parsed the options itself."""
    out = out or sys.stdout
    if seeds < 1 or workers < 1:
        print("haagent: --seeds and --workers must be at least 1", file=sys.stderr)
        return 2
    if verbose:
        return _verbose(range(start, start + seeds), out)
    report = run_swarm(range(start, start + seeds), workers)
    print(report.summary(), file=out)
    for r in report.failures:
        print(format_failure(r), file=out)
    return 1 if report.failures else 0


def format_failure(r: SeedResult) -> str:
    lines = [f"seed {r.seed}: {len(r.violations)} violation(s)"]
    lines += [f"  {v}" for v in r.violations[:5]]
    lines.append(f"  replay: haagent simulate --swarm --seeds 1 --start {r.seed} --verbose")
    lines.append(
        f"  shrunk schedule ({r.shrunk_faults} of {r.faults} steps; save it as a .scn file and "
        "run `haagent simulate --scenario FILE`):"
    )
    lines += [f"    {line}" for line in r.scenario.splitlines()]
    lines.append("  shortened trace of the shrunk schedule:")
    lines += [f"    {line}" for line in r.trace]
    return "\n".join(lines)


def _verbose(seeds: range, out: TextIO) -> int:
    bad = 0
    for seed in seeds:
        sc, tight = draw(seed)
        result = run_scenario(sc, settle_s=SETTLE_S)
        print(f"# seed {seed}", file=out)
        out.write(sc.to_text())
        out.write(result.trace_text())
        unknown, room = classify(result.violations, tight, lost_nodes(sc), frozenset(sc.nodes))
        if result.violations:
            print(result.checker.report(), file=out)
        for v in room:
            print(f"tolerated (tight memory): {v}", file=out)
        if unknown:
            bad += 1
        else:
            print(f"seed {seed}: no new violation ({result.world.now:g} simulated s)", file=out)
    return 1 if bad else 0
