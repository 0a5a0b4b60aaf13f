"""Scenario files: a small line language for simulated fault runs.

A scenario is a text file (tests/scenarios/*.scn). Lines starting with `#` are comments; the
first comment block is the scenario's description. Everything else is one statement per line:

    seed 7                              random seed (default 1)
    nodes n1 n2 n3                      hypervisors (4096 MiB each unless `memory`)
    witness w1                          a voter that runs no guests
    memory n1=2048 n2=2048              per-node guest memory
    fence watchdog n2                   fencing method of some nodes (default: agent)
    watchdog_timeout 5                  seconds, all nodes
    guest g1 memory=256 priority=10 prefer=n1,n2 allow=n1,n2
    set lease_s=1.0 failure_timeout_s=1.4    agent settings (AgentSettings fields)
    option drop_probability=0.01        simulator knobs (SimOptions fields)
    at 5 power_off n1                   a fault at t = 5 s (simulated), see FAULTS
    heal_bound 30                       seconds after the last fault for everything to run
    run 40                              simulate until t = 40 s (default: last fault + bound)
    expect running g1 on n2|n3          checked at the end
    expect stopped g1
    expect state g1 error
    expect node n1 fenced

Faults: power_off N, power_on N, cut N, heal [N], partition A,B|C, drop A B, crash G,
fail_starts N G COUNT, fence_script N ok|fail|hang[,...], clock_jump N SECONDS, hang N,
resume N, restart N, disable G, enable G.

`run_scenario` returns the trace (structured events) and the invariant violations.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from haagent.agent import AgentSettings, NodeSettings
from haagent.model import FenceMethod, GuestSpec, GuestState, NodeRole
from haagent.sim.invariants import InvariantChecker
from haagent.sim.world import SimOptions, TraceEvent, World

DEFAULT_MEMORY_MIB = 4096


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and line."""


@dataclass
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    nodes: list[str] = field(default_factory=list)
    witnesses: list[str] = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    fence: dict[str, FenceMethod] = field(default_factory=dict)
    watchdog_timeout_s: float = 5.0
    guests: list[GuestSpec] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    faults: list[tuple[float, str, list[str], int]] = field(default_factory=list)  # + line no
    heal_bound_s: float = 30.0
    run_s: float | None = None
    expectations: list[tuple[list[str], int]] = field(default_factory=list)

    def node_settings(self) -> dict[str, NodeSettings]:
        out: dict[str, NodeSettings] = {}
        for n in self.nodes:
            out[n] = NodeSettings(
                NodeRole.HYPERVISOR,
                self.memory.get(n, DEFAULT_MEMORY_MIB),
                self.fence.get(n, FenceMethod.AGENT),
                self.watchdog_timeout_s,
            )
        for w in self.witnesses:
            out[w] = NodeSettings(NodeRole.WITNESS)
        return out

    @property
    def end_s(self) -> float:
        if self.run_s is not None:
            return self.run_s
        last = max((t for t, *_ in self.faults), default=0.0)
        return last + self.heal_bound_s


_SETTING_FIELDS = {f.name for f in fields(AgentSettings)} - {"cluster", "node", "nodes", "guests"}
_OPTION_FIELDS = {f.name for f in fields(SimOptions)}
FAULTS: dict[str, tuple[int, int]] = {  # name -> (min args, max args)
    "power_off": (1, 1),
    "power_on": (1, 1),
    "cut": (1, 1),
    "heal": (0, 1),
    "partition": (1, 1),
    "drop": (2, 2),
    "crash": (1, 1),
    "fail_starts": (3, 3),
    "fence_script": (2, 2),
    "clock_jump": (2, 2),
    "hang": (1, 1),
    "resume": (1, 1),
    "restart": (1, 1),
    "disable": (1, 1),
    "enable": (1, 1),
}

NODE_ARGS: dict[str, tuple[int, ...]] = {
    "power_off": (0,),
    "power_on": (0,),
    "cut": (0,),
    "heal": (0,),
    "drop": (0, 1),
    "fail_starts": (0,),
    "fence_script": (0,),
    "clock_jump": (0,),
    "hang": (0,),
    "resume": (0,),
    "restart": (0,),
}
GUEST_ARGS: dict[str, tuple[int, ...]] = {
    "crash": (0,),
    "disable": (0,),
    "enable": (0,),
    "fail_starts": (1,),
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
        words = shlex.split(line, comments=True)
        verb, args = words[0], words[1:]
        try:
            _statement(sc, verb, args, where, number)
        except (IndexError, KeyError) as exc:
            raise ScenarioError(f"{where}: malformed {verb!r} statement ({exc})") from None
    sc.description = " ".join(description)
    if not sc.nodes:
        raise ScenarioError(f"{name}: no `nodes` line")
    nodes = set(sc.nodes) | set(sc.witnesses)
    guests = {g.name for g in sc.guests}
    for _t, verb, args, number in sc.faults:
        named_nodes = [args[i] for i in NODE_ARGS.get(verb, ()) if i < len(args)]
        if verb == "partition":
            named_nodes = [n for group in args[0].split("|") for n in group.split(",")]
        named_guests = [args[i] for i in GUEST_ARGS.get(verb, ())]
        for node in named_nodes:
            if node not in nodes:
                raise ScenarioError(f"{name}:{number}: unknown node {node!r}")
        for guest in named_guests:
            if guest not in guests:
                raise ScenarioError(f"{name}:{number}: unknown guest {guest!r}")
    return sc


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
        method = FenceMethod(args[0])
        for node in args[1:]:
            sc.fence[node] = method
    elif verb == "watchdog_timeout":
        sc.watchdog_timeout_s = _number(args[0], where)
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
        fault, fargs = args[1], args[2:]
        if fault not in FAULTS:
            raise ScenarioError(f"{where}: unknown fault {fault!r} (known: {', '.join(FAULTS)})")
        lo, hi = FAULTS[fault]
        if not lo <= len(fargs) <= hi:
            raise ScenarioError(f"{where}: {fault} takes {lo}..{hi} arguments")
        sc.faults.append((t, fault, fargs, number))
    elif verb == "heal_bound":
        sc.heal_bound_s = _number(args[0], where)
    elif verb == "run":
        sc.run_s = _number(args[0], where)
    elif verb == "expect":
        sc.expectations.append((args, number))
    else:
        raise ScenarioError(f"{where}: unknown statement {verb!r}")


def _guest(args: list[str], where: str) -> GuestSpec:
    name = args[0]
    kw: dict[str, Any] = {"name": name, "domain": name, "memory_mib": 256}
    for a in args[1:]:
        key, _, value = a.partition("=")
        if key == "memory":
            kw["memory_mib"] = int(value)
        elif key == "priority":
            kw["priority"] = int(value)
        elif key == "prefer":
            kw["preferred_nodes"] = tuple(value.split(","))
        elif key == "allow":
            kw["allowed_nodes"] = tuple(value.split(","))
        else:
            raise ScenarioError(f"{where}: unknown guest attribute {key!r}")
    return GuestSpec(**kw)


@dataclass
class ScenarioResult:
    scenario: Scenario
    world: World
    violations: list[str]
    failed_expectations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations and not self.failed_expectations

    def trace_lines(self) -> list[str]:
        return [json.dumps(e.to_json(), sort_keys=True) for e in self.world.trace]


def build_world(sc: Scenario, seed: int | None = None) -> World:
    return World(
        seed if seed is not None else sc.seed,
        sc.node_settings(),
        sc.guests,
        settings={"initial_placement_wait_s": 2.0, **sc.settings},
        options=SimOptions(**sc.options),
    )


def apply_fault(world: World, fault: str, args: list[str]) -> None:
    actions: dict[str, Callable[[], None]] = {
        "power_off": lambda: world.power_off(args[0]),
        "power_on": lambda: world.power_on(args[0]),
        "cut": lambda: world.cut(args[0]),
        "heal": lambda: world.heal(args[0] if args else None),
        "partition": lambda: world.partition([g.split(",") for g in args[0].split("|")]),
        "drop": lambda: world.drop(args[0], args[1]),
        "crash": lambda: world.crash_guest(args[0]),
        "fail_starts": lambda: world.fail_starts(args[0], args[1], int(args[2])),
        "fence_script": lambda: world.fence_script(args[0], args[1].split(",")),
        "clock_jump": lambda: world.clock_jump(args[0], float(args[1])),
        "hang": lambda: world.hang(args[0]),
        "resume": lambda: world.resume(args[0]),
        "restart": lambda: world.restart_agent(args[0]),
        "disable": lambda: world.disable(args[0]),
        "enable": lambda: world.enable(args[0]),
    }
    actions[fault]()


def run_scenario(sc: Scenario, seed: int | None = None) -> ScenarioResult:
    world = build_world(sc, seed)
    checker = InvariantChecker(world)
    for t, fault, args, _ in sorted(sc.faults, key=lambda f: (f[0], f[3])):
        world.run_until(t)
        apply_fault(world, fault, args)
    last = max((t for t, *_ in sc.faults), default=0.0)
    world.run_until(max(sc.end_s, last + sc.heal_bound_s))
    checker.check_healed(last, sc.heal_bound_s)
    failed = [
        f"{sc.name}:{n}: {msg}" for args, n in sc.expectations if (msg := _expectation(world, args))
    ]
    return ScenarioResult(sc, world, checker.violations, failed)


def _expectation(world: World, args: list[str]) -> str:
    """'' when the expectation holds, else what is wrong."""
    kind = args[0]
    state = world.committed_state
    if kind == "running":
        guest, hosts = args[1], set(args[3].split("|")) if len(args) > 3 else None
        where = world.running(guest)
        if len(where) != 1 or (hosts is not None and where[0] not in hosts):
            return (
                f"expected {guest} running on {args[3] if hosts else 'one node'}, runs on {where}"
            )
    elif kind == "stopped":
        if world.running(args[1]):
            return f"expected {args[1]} stopped, runs on {world.running(args[1])}"
    elif kind == "state":
        g = state.guests.get(args[1])
        if g is None or g.state is not GuestState(args[2]):
            return f"expected {args[1]} in state {args[2]}, is {g.state if g else None}"
    elif kind == "node":
        rec = state.node(args[1])
        if rec.state.value != args[2]:
            return f"expected node {args[1]} {args[2]}, is {rec.state}"
    else:
        return f"unknown expectation {kind!r}"
    return ""


def load_scenario(path: Path) -> Scenario:
    return parse_scenario(path.read_text(), path.stem)


def trace_to_text(events: list[TraceEvent]) -> str:
    return "".join(json.dumps(e.to_json(), sort_keys=True) + "\n" for e in events)
