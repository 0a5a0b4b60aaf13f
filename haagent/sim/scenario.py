"""Scenario files: a small line language for simulated fault runs.

A scenario is a text file (tests/scenarios/*.scn). Lines starting with `#` are comments; the
first comment block is the scenario's description. Everything else is one statement per line:

    seed 7                              random seed (default 1)
    nodes n1 n2 n3                      hypervisors (4096 MiB each unless `memory`)
    witness w1                          a voter that runs no guests
    memory n1=2048 n2=2048              per-node guest memory
    fence watchdog n2                   fencing method of some nodes (default: agent);
                                        `agent+watchdog`: power levels, then a watchdog level
    watchdog_timeout 5                  seconds, all nodes
    migration_uri n1 n2 n3              nodes reachable for live migration (maintenance
                                        evacuates by live migration when every one is)
    guest g1 memory=256 priority=10 prefer=n1,n2 allow=n1,n2 group=db
    set lease_s=1.0 failure_timeout_s=1.4    agent settings (AgentSettings fields)
    option drop_probability=0.01        simulator knobs (SimOptions fields)
    at 5 power_off n1                   a fault at t = 5 s (simulated), see FAULTS
    at 4 expect running g1 on n1        an expectation checked at t = 4 s
    heal_bound 30                       seconds after the last fault for everything to run
    run 40                              simulate until t = 40 s (default: last fault + bound)
    expect running g1 on n2|n3          checked at the end, see EXPECTATIONS

Faults (N a node, G a guest; `@leader` names the Raft leader at that moment, and in a
partition `*` stands for every node not named in another group):

    power_off N | power_on N | cut N | heal [N] | partition A,B|C | drop A B (A cannot reach B)
    deaf N (N hears nobody, everyone hears it: on the leader nothing commits, nobody elects)
    stall N (N's replica stops applying; what it proposes still commits; heal or restart ends it)
    crash G | fail_starts N G COUNT | fence_script N ATTEMPT[,ATTEMPT...] | clock_jump N SECONDS
    slow_start N G SECONDS (the next start of G on N takes SECONDS in the hypervisor; past
    start_timeout_s the agent hears "unknown" and the domain comes up late)
    hang N | resume N | restart N (the agent, kill -9) | shutdown N (clean leave, agent exits)
    disable G | enable G | maintenance N on|off | confirm_fenced N (admin: N is verified off)
    migrate G N (admin: live-migrate G to N, at the generation committed then)
    migrate_fault N G WHAT[,WHAT...] (the next migrations of G from N: `fail` (libvirt fails
    it) or a duration in seconds (past migration_timeout_s the job is aborted))
    cleanup G | move G N | disarm SECONDS | arm | freeze N | thaw N (admin, issue 12 part 5)
    link_down N IFACE | link_up N IFACE (the fake network: N's bridge/device IFACE stops or
    starts working; a guest line's nets=A,B names the interfaces the guest needs)
    resend N TYPE (the last committed command of TYPE proposed by N commits again, as when
    pysyncobj re-sends a queued command; TYPE as in the trace, e.g. guest_running)
    resend admin TYPE (an admin command commits again late: the one of TYPE before the latest,
    a decision a newer one replaced; admin commands carry the version they were decided on)
    snapshot_fails N (N's Raft snapshot is damaged: its next agent starts cannot load it)
    corrupt N (N's replica state changes without a command: only the digests can tell)
    config N KEY=VALUE... (N's config file changes, agent settings by name; its next agent
    start reads it: config drift)
    drbd_handler N broken|ok (N's DRBD fence-peer handler exits 1 at once, or works again)
    drbd_outdate N G (an admin runs `drbdadm outdate` on N for G's resource; only a
    disconnected Secondary can be outdated)
    drbd_events2 N dies|stalls SECONDS (N's events2 dies and the agent's watcher restarts it
    SECONDS later: unknown replica state meanwhile; or it stalls: its lines arrive late)

A fence ATTEMPT is `ok`, `fail` or `hang`, or fencing levels joined by `/` (`fail/ok`: level 1
fails, level 2 powers the node off).

Expectations:

    running G [on A|B]      runs on exactly one node (one of those)
    stopped G               runs nowhere
    state G STATE           committed guest state (stopped, starting, running, error)
    owner G N|-             committed owner
    desired G running|stopped
    generation G NUMBER
    failed_nodes G A,B|-    the nodes that gave up on it, in order
    node N STATE            committed node state (down, up, failed, fenced)
    maintenance N [on|off]
    frozen N [on|off]
    disarmed [on|off]       the committed arming
    powered N [on|off]
    event NAME [k=v ...]    the trace holds such an event (k=v match its fields; `at` is the
                            node; `after=T` matches events at T seconds or later)
    no_event NAME [k=v ...]
    events COUNT NAME [k=v ...]
    before "NAME k=v" "NAME k=v"   the first match of the first comes before that of the second

`run_scenario` returns the trace and the invariant violations. The trace is structured events
(`TraceEvent`, one JSON object a line in NAME.trace), never log prose: the faults (`fault_*`),
every commit but heartbeats (`commit` with type, proposer, accepted), the agents' decision
events (`join`, `declare_failed`, `fence`, `assign`, `start`, `destroy`, `guest_lost`, ...) and
what physically happened (`raft_leader`, `domain_started`, `domain_destroyed`, `power_off`,
`fence_device`, `agent_started`, ...).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from haagent.agent import AgentSettings, NodeSettings
from haagent.commands import COMMAND_TYPES
from haagent.model import (
    DesiredState,
    FenceMethod,
    GuestSpec,
    GuestState,
    Leg,
    NodeRole,
    NodeState,
    Raid1RunOn,
    StorageKind,
)
from haagent.sim import admin_verbs
from haagent.sim.invariants import InvariantChecker
from haagent.sim.world import ADMIN, FENCE_STEPS, SimOptions, TraceEvent, TraceValue, World

DEFAULT_MEMORY_MIB = 4096
DEFAULT_SETTINGS: dict[str, Any] = {"initial_placement_wait_s": 2.0}
"""Agent settings every scenario starts from (a short cold-start wait keeps traces short)."""

LEADER = "@leader"


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Step:
    """A fault (or a timed expectation, verb `expect`) at simulated time `t`."""

    t: float
    verb: str
    args: tuple[str, ...]
    line: int = 0


@dataclass
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    nodes: list[str] = field(default_factory=list)
    witnesses: list[str] = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    fence: dict[str, FenceMethod] = field(default_factory=dict)
    watchdog_level: set[str] = field(default_factory=set)  # agent levels, then a watchdog level
    watchdog_timeout_s: float = 5.0
    migration_uri: list[str] = field(default_factory=list)  # nodes with a migration URI
    guests: list[GuestSpec] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    faults: list[Step] = field(default_factory=list)
    checks: list[Step] = field(default_factory=list)  # timed expectations
    heal_bound_s: float = 30.0
    run_s: float | None = None
    expectations: list[tuple[tuple[str, ...], int]] = field(default_factory=list)

    def node_settings(self) -> dict[str, NodeSettings]:
        out: dict[str, NodeSettings] = {}
        for n in self.nodes:
            out[n] = NodeSettings(
                NodeRole.HYPERVISOR,
                self.memory.get(n, DEFAULT_MEMORY_MIB),
                self.fence.get(n, FenceMethod.AGENT),
                self.watchdog_timeout_s,
                watchdog_level=n in self.watchdog_level,
                migration_uri=f"sim+tcp://{n}/system" if n in self.migration_uri else "",
            )
        for w in self.witnesses:
            out[w] = NodeSettings(NodeRole.WITNESS)
        return out

    @property
    def last_fault_s(self) -> float:
        return max((f.t for f in self.faults), default=0.0)

    @property
    def end_s(self) -> float:
        """When the run stops: `run`, but never before the heal bound has passed."""
        bound = self.last_fault_s + self.heal_bound_s
        return bound if self.run_s is None else max(self.run_s, bound)

    def to_text(self) -> str:
        """The scenario as a file that `parse_scenario` reads back to an equal scenario."""
        out = [f"# {line}" for line in _wrap(self.description)] if self.description else []
        out.append(f"seed {self.seed}")
        out.append("nodes " + " ".join(self.nodes))
        if self.witnesses:
            out.append("witness " + " ".join(self.witnesses))
        if self.memory:
            out.append("memory " + " ".join(f"{n}={m}" for n, m in self.memory.items()))
        for method in FenceMethod:
            named = [
                n for n, m in self.fence.items() if m is method and n not in self.watchdog_level
            ]
            if named:
                out.append(f"fence {method.value} " + " ".join(named))
        if self.watchdog_level:
            out.append("fence agent+watchdog " + " ".join(sorted(self.watchdog_level)))
        out.append(f"watchdog_timeout {_num(self.watchdog_timeout_s)}")
        if self.migration_uri:
            out.append("migration_uri " + " ".join(self.migration_uri))
        out += [_guest_line(g) for g in self.guests]
        if self.settings:
            out.append("set " + " ".join(f"{k}={_text(v)}" for k, v in self.settings.items()))
        if self.options:
            out.append("option " + " ".join(f"{k}={_text(v)}" for k, v in self.options.items()))
        steps = sorted([*self.faults, *self.checks], key=lambda s: (s.t, s.line))
        for s in steps:
            out.append(shlex.join(["at", _num(s.t), s.verb, *s.args]))
        out.append(f"heal_bound {_num(self.heal_bound_s)}")
        if self.run_s is not None:
            out.append(f"run {_num(self.run_s)}")
        out += [shlex.join(["expect", *args]) for args, _ in self.expectations]
        return "\n".join(out) + "\n"


def _wrap(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return [*lines, current] if current else lines


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return ",".join(_text(x) for x in v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _guest_line(g: GuestSpec) -> str:
    parts = [f"guest {g.name}"]
    if g.domain != g.name:
        parts.append(f"domain={g.domain}")
    parts.append(f"memory={g.memory_mib}")
    if g.priority:
        parts.append(f"priority={g.priority}")
    if g.preferred_nodes:
        parts.append("prefer=" + ",".join(g.preferred_nodes))
    if g.allowed_nodes:
        parts.append("allow=" + ",".join(g.allowed_nodes))
    if g.anti_affinity:
        parts.append(f"group={g.anti_affinity}")
    if g.storage is StorageKind.DRBD:
        parts.append("drbd=" + ",".join(g.replica_nodes))
    if g.storage is StorageKind.RAID1:
        parts.append("raid1=" + ",".join(g.leg_holders))
        if g.raid1_run_on is Raid1RunOn.ANY:
            parts.append("run_on=any")
    if g.networks:
        parts.append("nets=" + ",".join(g.networks))
    return " ".join(parts)


_SETTING_FIELDS = {f.name for f in fields(AgentSettings)} - {"cluster", "node", "nodes", "guests"}
_OPTION_FIELDS = {f.name for f in fields(SimOptions)}
FAULTS: dict[str, tuple[int, int]] = {  # name -> (min args, max args)
    "power_off": (1, 1),
    "power_on": (1, 1),
    "cut": (1, 1),
    "heal": (0, 1),
    "partition": (1, 1),
    "drop": (2, 2),
    "deaf": (1, 1),
    "stall": (1, 1),
    "crash": (1, 1),
    "fail_starts": (3, 3),
    "slow_start": (3, 3),
    "fence_script": (2, 2),
    "clock_jump": (2, 2),
    "hang": (1, 1),
    "resume": (1, 1),
    "restart": (1, 1),
    "shutdown": (1, 1),
    "disable": (1, 1),
    "enable": (1, 1),
    "maintenance": (2, 2),
    "resend": (2, 2),
    "confirm_fenced": (1, 1),
    "snapshot_fails": (1, 1),
    "corrupt": (1, 1),
    "config": (2, 99),
    "link_down": (2, 2),
    "link_up": (2, 2),
    "migrate": (2, 2),
    "migrate_fault": (3, 3),
    "cleanup": (1, 1),
    "move": (2, 2),
    "disarm": (1, 1),
    "arm": (0, 0),
    "freeze": (1, 1),
    "thaw": (1, 1),
    "drbd_handler": (2, 2),
    "drbd_outdate": (2, 2),
    "drbd_events2": (3, 3),
}

NODE_ARGS: dict[str, tuple[int, ...]] = {
    "power_off": (0,),
    "power_on": (0,),
    "cut": (0,),
    "heal": (0,),
    "drop": (0, 1),
    "deaf": (0,),
    "stall": (0,),
    "fail_starts": (0,),
    "slow_start": (0,),
    "fence_script": (0,),
    "clock_jump": (0,),
    "hang": (0,),
    "resume": (0,),
    "restart": (0,),
    "shutdown": (0,),
    "maintenance": (0,),
    "resend": (0,),
    "confirm_fenced": (0,),
    "snapshot_fails": (0,),
    "corrupt": (0,),
    "config": (0,),
    "link_down": (0,),
    "link_up": (0,),
    "migrate": (1,),
    "migrate_fault": (0,),
    "move": (1,),
    "freeze": (0,),
    "thaw": (0,),
    "drbd_handler": (0,),
    "drbd_outdate": (0,),
    "drbd_events2": (0,),
}
GUEST_ARGS: dict[str, tuple[int, ...]] = {
    "crash": (0,),
    "cleanup": (0,),
    "move": (0,),
    "drbd_outdate": (1,),
    "disable": (0,),
    "enable": (0,),
    "fail_starts": (1,),
    "slow_start": (1,),
    "migrate": (0,),
    "migrate_fault": (1,),
}

EXPECTATIONS: dict[str, tuple[int, int]] = {  # kind -> (min args, max args) after the kind
    "running": (1, 3),
    "stopped": (1, 1),
    "state": (2, 2),
    "owner": (2, 2),
    "desired": (2, 2),
    "generation": (2, 2),
    "failed_nodes": (2, 2),
    "node": (2, 2),
    "maintenance": (1, 2),
    "frozen": (1, 2),
    "disarmed": (0, 1),
    "powered": (1, 2),
    "event": (1, 99),
    "no_event": (1, 99),
    "events": (2, 99),
    "before": (2, 2),
}


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ScenarioError(f"{where}: expected a number, got {text!r}") from None


def _value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    if "," in text:
        return tuple(_value(t) for t in text.split(","))
    return text


def parse_scenario(text: str, name: str = "scenario") -> Scenario:
    sc = Scenario(name=name)
    description: list[str] = []
    in_header = True
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{name}:{number}"
        if not line:
            in_header = in_header and not description
            continue
        if line.startswith("#"):
            if in_header:
                description.append(line.lstrip("#").strip())
            continue
        in_header = False
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        verb, args = words[0], words[1:]
        try:
            _statement(sc, verb, args, where, number)
        except (IndexError, KeyError, ValueError) as exc:
            if isinstance(exc, ScenarioError):
                raise
            raise ScenarioError(f"{where}: malformed {verb!r} statement ({exc})") from None
    sc.description = " ".join(description)
    _validate(sc)
    return sc


def _validate(sc: Scenario) -> None:
    name = sc.name
    if not sc.nodes:
        raise ScenarioError(f"{name}: no `nodes` line")
    nodes = set(sc.nodes) | set(sc.witnesses)
    if len(nodes) != len(sc.nodes) + len(sc.witnesses):
        raise ScenarioError(f"{name}: a node is named twice")
    guests = {g.name for g in sc.guests}
    for node in [*sc.memory, *sc.fence, *sc.migration_uri]:
        if node not in sc.nodes:
            raise ScenarioError(f"{name}: {node!r} is not a hypervisor")
    for g in sc.guests:
        for node in (*g.preferred_nodes, *g.allowed_nodes, *g.replica_nodes, *g.leg_holders):
            if node not in sc.nodes:
                raise ScenarioError(f"{name}: guest {g.name}: {node!r} is not a hypervisor")
    if not sc.options.get("hardware_watchdog", True) and FenceMethod.WATCHDOG in sc.fence.values():
        raise ScenarioError(f"{name}: watchdog fencing needs option hardware_watchdog=true")
    for step in sc.faults:
        where = f"{name}:{step.line}"
        named_nodes = [step.args[i] for i in NODE_ARGS.get(step.verb, ()) if i < len(step.args)]
        if step.verb == "partition":
            named_nodes = [
                n for group in step.args[0].split("|") for n in group.split(",") if n != "*"
            ]
        if step.verb == "resend" and step.args[0] == ADMIN:
            named_nodes = []
        for node in named_nodes:
            if node not in nodes and node != LEADER:
                raise ScenarioError(f"{where}: unknown node {node!r}")
        for guest in [step.args[i] for i in GUEST_ARGS.get(step.verb, ())]:
            if guest not in guests:
                raise ScenarioError(f"{where}: unknown guest {guest!r}")
        if step.verb == "fence_script":
            for attempt in step.args[1].split(","):
                if any(s not in FENCE_STEPS for s in attempt.split("/")):
                    raise ScenarioError(f"{where}: bad fence attempt {attempt!r}")
        if step.verb == "resend" and step.args[1] not in COMMAND_TYPES:
            raise ScenarioError(f"{where}: unknown command type {step.args[1]!r}")
        if step.verb == "maintenance" and step.args[1] not in ("on", "off"):
            raise ScenarioError(f"{where}: maintenance takes on|off")
        if step.verb in ("fail_starts", "clock_jump", "slow_start", "disarm", "drbd_events2"):
            _number(step.args[-1], where)
        if step.verb == "drbd_handler" and step.args[1] not in ("broken", "ok"):
            raise ScenarioError(f"{where}: drbd_handler takes broken|ok")
        if step.verb == "drbd_events2" and step.args[1] not in ("dies", "stalls"):
            raise ScenarioError(f"{where}: drbd_events2 takes dies|stalls SECONDS")
        if step.verb == "config":
            for arg in step.args[1:]:
                key, eq, _ = arg.partition("=")
                if not eq or key not in _SETTING_FIELDS:
                    raise ScenarioError(f"{where}: config takes SETTING=VALUE, got {arg!r}")


def _statement(sc: Scenario, verb: str, args: list[str], where: str, number: int) -> None:
    if verb == "seed":
        sc.seed = int(args[0])
    elif verb == "nodes":
        sc.nodes = list(args)
    elif verb == "witness":
        sc.witnesses = list(args)
    elif verb == "memory":
        for a in args:
            node, _, mib = a.partition("=")
            sc.memory[node] = int(mib)
    elif verb == "fence":
        level = args[0] == "agent+watchdog"
        method = FenceMethod.AGENT if level else FenceMethod(args[0])
        for node in args[1:]:
            sc.fence[node] = method
            if level:
                sc.watchdog_level.add(node)
            else:
                sc.watchdog_level.discard(node)
    elif verb == "watchdog_timeout":
        sc.watchdog_timeout_s = _number(args[0], where)
    elif verb == "migration_uri":
        sc.migration_uri = list(args)
    elif verb == "guest":
        sc.guests.append(_guest(args, where))
    elif verb in ("set", "option"):
        allowed = _SETTING_FIELDS if verb == "set" else _OPTION_FIELDS
        target = sc.settings if verb == "set" else sc.options
        for a in args:
            key, _, value = a.partition("=")
            if key not in allowed:
                raise ScenarioError(f"{where}: unknown {verb} {key!r}")
            target[key] = _value(value)
    elif verb == "at":
        t = _number(args[0], where)
        what, rest = args[1], tuple(args[2:])
        if what == "expect":
            _check_expectation(rest, where)
            sc.checks.append(Step(t, what, rest, number))
            return
        if what not in FAULTS:
            raise ScenarioError(f"{where}: unknown fault {what!r} (known: {', '.join(FAULTS)})")
        lo, hi = FAULTS[what]
        if not lo <= len(rest) <= hi:
            raise ScenarioError(f"{where}: {what} takes {lo}..{hi} arguments")
        sc.faults.append(Step(t, what, rest, number))
    elif verb == "heal_bound":
        sc.heal_bound_s = _number(args[0], where)
    elif verb == "run":
        sc.run_s = _number(args[0], where)
    elif verb == "expect":
        _check_expectation(tuple(args), where)
        sc.expectations.append((tuple(args), number))
    else:
        raise ScenarioError(f"{where}: unknown statement {verb!r}")


def _check_expectation(args: tuple[str, ...], where: str) -> None:
    if not args or args[0] not in EXPECTATIONS:
        known = ", ".join(EXPECTATIONS)
        raise ScenarioError(f"{where}: unknown expectation {args[:1]} (known: {known})")
    lo, hi = EXPECTATIONS[args[0]]
    if not lo <= len(args) - 1 <= hi:
        raise ScenarioError(f"{where}: expect {args[0]} takes {lo}..{hi} arguments")
    if args[0] == "running" and len(args) > 2 and (len(args) != 4 or args[2] != "on"):
        raise ScenarioError(f"{where}: expect running G [on A|B]")
    kind = args[0]
    enums: dict[str, type[GuestState | DesiredState | NodeState]] = {
        "state": GuestState,
        "desired": DesiredState,
        "node": NodeState,
    }
    if kind in enums:
        try:
            enums[kind](args[2])
        except ValueError:
            known = ", ".join(v.value for v in enums[kind])
            raise ScenarioError(
                f"{where}: expect {kind}: {args[2]!r} is not one of {known}"
            ) from None
    if kind in ("maintenance", "powered", "frozen") and args[2:] and args[2] not in ("on", "off"):
        raise ScenarioError(f"{where}: expect {kind} N [on|off]")
    if kind == "disarmed" and args[1:] and args[1] not in ("on", "off"):
        raise ScenarioError(f"{where}: expect disarmed [on|off]")
    if kind == "events":
        int(args[1])
    if kind == "before":
        for pattern in args[1:]:
            if not shlex.split(pattern):
                raise ScenarioError(f"{where}: expect before: empty event pattern")


def _guest(args: list[str], where: str) -> GuestSpec:
    name = args[0]
    kw: dict[str, Any] = {"name": name, "domain": name, "memory_mib": 256}
    for a in args[1:]:
        key, _, value = a.partition("=")
        if key == "memory":
            kw["memory_mib"] = int(value)
        elif key == "domain":
            kw["domain"] = value
        elif key == "priority":
            kw["priority"] = int(value)
        elif key == "prefer":
            kw["preferred_nodes"] = tuple(value.split(","))
        elif key == "allow":
            kw["allowed_nodes"] = tuple(value.split(","))
        elif key == "group":
            kw["anti_affinity"] = value
        elif key == "nets":
            kw["networks"] = tuple(value.split(","))
        elif key == "drbd":
            replicas = tuple(value.split(","))
            if len(replicas) != 2:
                raise ScenarioError(f"{where}: drbd= names exactly two replica hosts")
            kw.update(storage=StorageKind.DRBD, replica_nodes=replicas, resource=f"r-{name}")
        elif key == "raid1":
            kw.update(storage=StorageKind.RAID1, legs=sim_legs(name, value.split(",")))
            if len(kw["legs"]) != 2 or kw["legs"][0].holder == kw["legs"][1].holder:
                raise ScenarioError(f"{where}: raid1= names exactly two different leg holders")
        elif key == "run_on":
            try:
                kw["raid1_run_on"] = Raid1RunOn(value)
            except ValueError:
                raise ScenarioError(f"{where}: run_on= is holders or any") from None
        else:
            raise ScenarioError(f"{where}: unknown guest attribute {key!r}")
    return GuestSpec(**kw)


def sim_legs(guest: str, holders: list[str]) -> tuple[Leg, ...]:
    """A simulated raid1 guest's legs a, b, ... held by `holders` in order."""
    return tuple(
        Leg(
            chr(ord("a") + i),
            holder,
            f"/dev/sim/{guest}-{chr(ord('a') + i)}",
            f"nbd://{holder}:10809/{guest}-{chr(ord('a') + i)}",
        )
        for i, holder in enumerate(holders)
    )


@dataclass
class ScenarioResult:
    scenario: Scenario
    world: World
    checker: InvariantChecker
    violations: list[str]
    failed_expectations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations and not self.failed_expectations

    def trace_lines(self) -> list[str]:
        return [json.dumps(e.to_json(), sort_keys=True) for e in self.world.trace]

    def trace_text(self) -> str:
        return trace_to_text(self.world.trace)


def build_world(sc: Scenario, seed: int | None = None) -> World:
    return World(
        seed if seed is not None else sc.seed,
        sc.node_settings(),
        sc.guests,
        settings={**DEFAULT_SETTINGS, **sc.settings},
        options=SimOptions(**sc.options),
    )


def _resolve(world: World, node: str) -> str | None:
    if node == LEADER:
        return world.leader
    return node


def apply_fault(world: World, fault: str, args: Sequence[str]) -> None:
    """Run one fault of the vocabulary against `world` (node aliases resolved now)."""
    nodes = [_resolve(world, args[i]) for i in NODE_ARGS.get(fault, ()) if i < len(args)]
    if any(n is None for n in nodes):
        world.record(None, "fault_skipped", fault=fault, why="no leader")
        return
    a = [str(x) for x in args]
    for i, n in zip(NODE_ARGS.get(fault, ()), nodes, strict=False):
        a[i] = str(n)
    actions: dict[str, Callable[[], None]] = {
        "power_off": lambda: world.power_off(a[0]),
        "power_on": lambda: world.power_on(a[0]),
        "cut": lambda: world.cut(a[0]),
        "heal": lambda: world.heal(a[0] if a else None),
        "partition": lambda: world.partition(_groups(world, a[0])),
        "drop": lambda: world.drop(a[0], a[1]),
        "deaf": lambda: world.deaf(a[0]),
        "stall": lambda: world.stall(a[0]),
        "crash": lambda: world.crash_guest(a[0]),
        "fail_starts": lambda: world.fail_starts(a[0], a[1], int(a[2])),
        "slow_start": lambda: world.slow_start(a[0], a[1], float(a[2])),
        "fence_script": lambda: world.fence_script(a[0], a[1].split(",")),
        "clock_jump": lambda: world.clock_jump(a[0], float(a[1])),
        "hang": lambda: world.hang(a[0]),
        "resume": lambda: world.resume(a[0]),
        "restart": lambda: world.restart_agent(a[0]),
        "shutdown": lambda: world.shutdown(a[0]),
        "disable": lambda: world.disable(a[0]),
        "enable": lambda: world.enable(a[0]),
        "maintenance": lambda: world.maintenance(a[0], a[1] == "on"),
        "resend": lambda: world.resend(a[0], a[1]),
        "confirm_fenced": lambda: world.confirm_fenced(a[0]),
        "snapshot_fails": lambda: world.snapshot_fails(a[0]),
        "corrupt": lambda: world.corrupt(a[0]),
        "config": lambda: world.config(a[0], _assignments(a[1:])),
        "link_down": lambda: world.fake_network.set_link(a[0], a[1], up=False),
        "link_up": lambda: world.fake_network.set_link(a[0], a[1], up=True),
        "migrate": lambda: world.migrate(a[0], a[1]),
        "migrate_fault": lambda: world.migrate_fault(a[0], a[1], a[2].split(",")),
        "cleanup": lambda: admin_verbs.cleanup(world, a[0]),
        "move": lambda: admin_verbs.move(world, a[0], a[1]),
        "disarm": lambda: admin_verbs.set_arming(world, True, float(a[0])),
        "arm": lambda: admin_verbs.set_arming(world, False),
        "freeze": lambda: admin_verbs.set_frozen(world, a[0], True),
        "thaw": lambda: admin_verbs.set_frozen(world, a[0], False),
        "drbd_handler": lambda: world.drbd_handler(a[0], a[1] == "broken"),
        "drbd_outdate": lambda: world.drbd_outdate(a[0], a[1]),
        "drbd_events2": lambda: world.drbd_events2(a[0], a[1], float(a[2])),
    }
    actions[fault]()


def _assignments(args: Sequence[str]) -> dict[str, Any]:
    """`key=value ...` as agent settings (checked against `AgentSettings` when parsed)."""
    return {k: _value(v) for k, _, v in (arg.partition("=") for arg in args)}


def _groups(world: World, text: str) -> list[list[str]]:
    groups = [[str(_resolve(world, n) or "") for n in g.split(",")] for g in text.split("|")]
    named = {n for g in groups for n in g}
    rest = [n for n in world.nodes if n not in named]
    return [[m for n in g for m in (rest if n == "*" else [n]) if m] for g in groups]


def run_scenario(
    sc: Scenario, seed: int | None = None, settle_s: float | None = None
) -> ScenarioResult:
    """Run `sc` (with its seed, or `seed`); check invariants after every step, the timed
    expectations on time, then the heal bound and the final expectations.

    With `settle_s`, the run ends early once every wanted guest has run where the committed
    state says for `settle_s` seconds after the last fault (the swarm saves time this way);
    otherwise it runs until `sc.end_s`.
    """
    world = build_world(sc, seed)
    checker = InvariantChecker(world)
    failed: list[str] = []
    steps = sorted([*sc.faults, *sc.checks], key=lambda s: (s.t, s.line))
    for step in steps:
        world.run_until(step.t)
        if step.verb == "expect":
            msg = expectation(world, step.args)
            if msg:
                failed.append(f"{sc.name}:{step.line}: at {step.t:g}s: {msg}")
        else:
            apply_fault(world, step.verb, step.args)
    last = sc.last_fault_s
    if settle_s is None:
        world.run_until(sc.end_s)
        checker.check_healed(last, sc.heal_bound_s)
    else:
        _run_until_settled(world, checker, last, sc.heal_bound_s, settle_s)
    failed += [
        f"{sc.name}:{n}: {msg}" for args, n in sc.expectations if (msg := expectation(world, args))
    ]
    return ScenarioResult(sc, world, checker, checker.violations, failed)


def _run_until_settled(
    world: World, checker: InvariantChecker, last: float, bound_s: float, settle_s: float
) -> None:
    healed_since: float | None = None
    t = max(world.now, last)
    while t < last + bound_s:
        t = min(t + 1.0, last + bound_s)
        world.run_until(t)
        if checker.unhealed():
            healed_since = None
        elif healed_since is None:
            healed_since = t
        elif t - healed_since >= settle_s:
            return
    checker.check_healed(last, bound_s)


# -- expectations -------------------------------------------------------------------------------


def expectation(world: World, args: Sequence[str]) -> str:
    """'' when the expectation holds in `world` now, else what is wrong."""
    kind, rest = args[0], list(args[1:])
    state = world.committed_state
    if kind in ("running", "stopped"):
        guest = rest[0]
        where = world.running(guest)
        if kind == "stopped":
            return f"expected {guest} stopped, runs on {where}" if where else ""
        hosts = set(rest[2].split("|")) if len(rest) > 2 else None
        if len(where) != 1 or (hosts is not None and where[0] not in hosts):
            return (
                f"expected {guest} running on {rest[2] if hosts else 'one node'}, runs on {where}"
            )
        return ""
    if kind in ("state", "owner", "desired", "generation", "failed_nodes"):
        g = state.guests.get(rest[0])
        if g is None:
            return f"guest {rest[0]} is not registered"
        actual = {
            "state": g.state.value,
            "owner": g.owner or "-",
            "desired": g.desired.value,
            "generation": str(g.generation),
            "failed_nodes": ",".join(g.failed_nodes) or "-",
        }[kind]
        return "" if actual == rest[1] else f"expected {kind} of {rest[0]} {rest[1]}, is {actual}"
    if kind == "node":
        rec = state.node(rest[0])
        return (
            ""
            if rec.state.value == rest[1]
            else f"expected node {rest[0]} {rest[1]}, is {rec.state}"
        )
    if kind == "disarmed":
        want = (rest[0] if rest else "on") == "on"
        if state.arming.disarmed != want:
            return f"expected disarmed {'on' if want else 'off'}"
        return ""
    if kind in ("maintenance", "powered", "frozen"):
        want = (rest[1] if len(rest) > 1 else "on") == "on"
        if kind == "frozen":
            is_on = state.node(rest[0]).frozen
        else:
            rec = state.node(rest[0])
            is_on = rec.maintenance if kind == "maintenance" else world.powered(rest[0])
        if is_on != want:
            return f"expected {kind} {'on' if want else 'off'} for {rest[0]}"
        return ""
    if kind in ("event", "no_event", "events"):
        count = None
        if kind == "events":
            count, rest = int(rest[0]), rest[1:]
        found = [e for e in world.trace if _matches(e, rest)]
        pattern = " ".join(rest)
        if kind == "event" and not found:
            return f"expected an event {pattern}, there is none"
        if kind == "no_event" and found:
            return f"expected no event {pattern}, found: {_event_text(found[0])}"
        if count is not None and len(found) != count:
            return f"expected {count} events {pattern}, found {len(found)}"
        return ""
    if kind == "before":
        first, second = (shlex.split(p) for p in rest)
        a = next((i for i, e in enumerate(world.trace) if _matches(e, first)), None)
        b = next((i for i, e in enumerate(world.trace) if _matches(e, second)), None)
        if a is None or b is None:
            seen = f"found: {a is not None}, {b is not None}"
            return f"expected both {rest[0]!r} and {rest[1]!r} ({seen})"
        return "" if a < b else f"expected {rest[0]!r} before {rest[1]!r}"
    return f"unknown expectation {kind!r}"


def _render(v: TraceValue) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return str(v)


def _matches(event: TraceEvent, pattern: Sequence[str]) -> bool:
    if event.name != pattern[0]:
        return False
    data = event.to_json()
    for item in pattern[1:]:
        key, _, value = item.partition("=")
        if key == "after":
            if event.t < float(value):
                return False
        elif key not in data or _render(data[key]) != value:
            return False
    return True


def _event_text(event: TraceEvent) -> str:
    return json.dumps(event.to_json(), sort_keys=True)


def load_scenario(path: Path) -> Scenario:
    return parse_scenario(path.read_text(), path.stem)


def trace_to_text(events: list[TraceEvent]) -> str:
    return "".join(json.dumps(e.to_json(), sort_keys=True) + "\n" for e in events)


# -- command line -----------------------------------------------------------------------------


def scenario_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="haagent simulate --scenario",
        description="Run one scenario file in the deterministic simulator.",
    )
    p.add_argument("--scenario", required=True, type=Path, help="a .scn file")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--trace", action="store_true", help="print the trace (JSON lines)")
    return p


def scenario_main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """`haagent simulate --scenario FILE [--seed N] [--trace]`.

    `argv` holds the arguments after `simulate` (the `--scenario FILE` option included).
    Exit status: 0 when no invariant is violated and every expectation holds, 1 otherwise,
    2 for a missing or malformed scenario file.
    """
    args = scenario_parser().parse_args(argv)
    return run_scenario_cli(args.scenario, args.seed, args.trace, out)


def run_scenario_cli(
    path: Path, seed: int | None = None, trace: bool = False, out: TextIO | None = None
) -> int:
    """The body of `scenario_main`, for a caller that parsed the options itself."""
    out = out or sys.stdout
    try:
        sc = load_scenario(path)
    except (OSError, ScenarioError) as exc:
        print(f"haagent: {exc}", file=sys.stderr)
        return 2
    result = run_scenario(sc, seed)
    if trace:
        out.write(result.trace_text())
    used = seed if seed is not None else sc.seed
    print(f"scenario {sc.name} (seed {used}): {sc.description}", file=out)
    if result.violations:
        print(result.checker.report(), file=out)
    for msg in result.failed_expectations:
        print(f"expectation failed: {msg}", file=out)
    verdict = "ok" if result.ok else "FAILED"
    print(
        f"{verdict}: {len(result.world.trace)} events, {len(result.violations)} violations, "
        f"{len(result.failed_expectations)} failed expectations, "
        f"{result.world.now:g}s simulated",
        file=out,
    )
    return 0 if result.ok else 1
