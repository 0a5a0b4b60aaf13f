"""The swarm's draws of the faults the scenarios cover and the first draws skipped (issue 8
item 10): a Raft snapshot that fails to load, config drift, a replica changed without a
command, admin decisions re-delivered late, and host network links that fail.

Drawn from a random of their own (`haagent-swarm-cover-SEED`), so every other draw of a seed
stays what it was before these existed. Every added fault comes before the final healing, and
the healing brings every link back up. A node whose snapshot is damaged or whose config file
drifted stays out of the cluster for good (it boots with the same file): at most one per seed,
and only with three voters or more, so the others keep a majority.
"""

from __future__ import annotations

import random
from dataclasses import replace

from haagent.model import FenceMethod
from haagent.sim.scenario import Scenario, Step
from haagent.sim.world import ADMIN

HEALING_LINE = 10_000
"""Generated healing steps are numbered from here, so shrinking can tell them apart."""

NETWORKS = ("br0", "br1")

# Cluster-wide settings a node's file may disagree on (the join is refused: one committed
# source), each with a value the swarm's cluster does not use.
DRIFTS = (("failure_timeout_s", "3.0"), ("lease_s", "1.5"), ("heartbeat_s", "0.4"))


def coverage_faults(seed: int, sc: Scenario) -> bool:
    """Add this seed's coverage faults to `sc` (in place), renumbering its steps. True if a
    node is out for good: the cluster lost its capacity (and its replicas) for good, so a
    guest left without room after healing is tolerated, as in a seed drawn tight."""
    rng = random.Random(f"haagent-swarm-cover-{seed}")
    faults = [f for f in sc.faults if f.line < HEALING_LINE]
    healing = [f for f in sc.faults if f.line >= HEALING_LINE]
    heal_t = healing[0].t
    last = max(faults[-1].t if faults else 1.0, 1.0)

    def when(after: float = 0.5) -> float:
        return round(rng.uniform(after, max(after, last)), 3)

    added: list[list[Step]] = []  # groups: each is added whole or not at all
    voters = len(sc.nodes) + len(sc.witnesses)
    out = rng.random()
    # A node fenced by its watchdog alone whose watchdog a disarm released cannot be proven off
    # once it is out for good: only an admin's confirm-fenced recovers its guests (by design,
    # issue 8 item 2), and the swarm has no admin to give it. Such a node is not the one lost.
    losable = sc.nodes
    if any(f.verb == "disarm" for f in sc.faults):
        losable = [n for n in sc.nodes if sc.fence.get(n) is not FenceMethod.WATCHDOG]
    lost = voters >= 3 and out < 0.16 and bool(losable)
    lost_node = ""
    if lost:
        node, t = rng.choice(losable), when()
        lost_node = node
        if out < 0.08:
            damage = Step(t, "snapshot_fails", (node,))
        else:
            key, value = rng.choice(DRIFTS)
            damage = Step(t, "config", (node, f"{key}={value}"))
        added.append([damage, Step(round(t + rng.uniform(0.0, 2.0), 3), "restart", (node,))])
    if rng.random() < 0.1:
        # A corrupted replica takes its node out of the cluster for good too (it diverges,
        # leaves Raft, is fenced and rejoins with the same replica): with a disarm drawn, a
        # watchdog-fenced node is not corrupted, for the reason given above (swarm seed 720:
        # n1's watchdog was released by a disarm that committed as it left Raft, so its
        # re-arm never could), and no second node is lost for good (the others keep a
        # majority; swarm seed 1860 counts it as the node lost, so a guest left without room
        # or with only stale legs is tolerated). Time and node are drawn as before, so the
        # seed's later draws stay what they were.
        t = when()
        node = rng.choice(sc.nodes)
        if node in losable and lost_node in ("", node):
            added.append([Step(t, "corrupt", (node,))])
    if sc.guests and rng.random() < 0.25:
        guest, t = rng.choice(sc.guests).name, when()
        back = round(t + rng.uniform(0.5, 3.0), 3)
        late = round(back + rng.uniform(0.1, 5.0), 3)
        added.append(
            [
                Step(t, "disable", (guest,)),
                Step(back, "enable", (guest,)),
                Step(late, "resend", (ADMIN, "set_desired")),
            ]
        )
    if rng.random() < 0.15:
        node, t = rng.choice(sc.nodes), when()
        back = round(t + rng.uniform(0.5, 3.0), 3)
        late = round(back + rng.uniform(0.1, 5.0), 3)
        added.append(
            [
                Step(t, "maintenance", (node, "on")),
                Step(back, "maintenance", (node, "off")),
                Step(late, "resend", (ADMIN, "set_maintenance")),
            ]
        )
    if rng.random() < 0.3:
        sc.guests = [
            replace(g, networks=(rng.choice(NETWORKS),)) if rng.random() < 0.5 else g
            for g in sc.guests
        ]
        for _ in range(rng.randint(1, 2)):
            node, iface, t = rng.choice(sc.nodes), rng.choice(NETWORKS), when()
            link = [Step(t, "link_down", (node, iface))]
            if rng.random() < 0.5:
                link.append(Step(round(t + rng.uniform(0.5, 8.0), 3), "link_up", (node, iface)))
            added.append(link)
            healing.append(Step(heal_t, "link_up", (node, iface)))
    # A group that would not end before the healing is left out whole (the heal bound counts
    # from the healing, and half a pair could leave a guest disabled).
    faults += [s for group in added if max(s.t for s in group) < heal_t for s in group]
    faults.sort(key=lambda f: f.t)
    numbered = [replace(f, line=i) for i, f in enumerate(faults, start=1)]
    sc.faults = numbered + [replace(s, line=HEALING_LINE + i) for i, s in enumerate(healing)]
    return any(s.verb in LOSING_VERBS for s in faults)


LOSING_VERBS = ("snapshot_fails", "config", "corrupt")
"""The faults that take a node out of the cluster for good (it boots with the same damage, a
corrupted replica included)."""


def lost_nodes(sc: Scenario) -> frozenset[str]:
    """The nodes `sc` takes out of the cluster for good (at most one in a drawn seed)."""
    return frozenset(f.args[0] for f in sc.faults if f.verb in LOSING_VERBS)
