"""Watch a running `LocalCluster` from outside and check its safety properties.

`ClusterWatch` samples every agent's `GET /v1/status` every `interval_s` (one thread per node,
so a frozen agent does not delay the others) and polls every agent's pid every `pid_poll_s`.
From that record it answers, for each guest and each node, "when might this node have been
running it?", and checks that no two nodes ever might have at the same time.

How an observation counts (each has a window [t0, t1]: request sent, answer or give-up):

* an answer whose `local` (the hypervisor observed at request time) lists the guest opens a
  "maybe running" interval at t0;
* an answer that does not list it closes the open interval at t1;
* no answer from a live process (SIGSTOPped, hung, overloaded, or its hypervisor unobservable)
  changes nothing: the node may still run what it last reported;
* the death of the agent process closes every interval of that node at the moment the pid
  poll saw it gone: with libvirt's in-process test driver a guest dies with its agent.

Intervals are conservative on the closing side (they end when the stop was observed, not when
it happened), so an overlap is reported even for a copy that outlived the other by less than a
sampling period; a real double start lasts until someone notices, which is much longer.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from haagent.localcluster.cluster import LocalCluster, http_get_json, pid_alive

__all__ = [
    "ClusterWatch",
    "Death",
    "Interval",
    "Observation",
    "log_lines",
    "power_events",
]


@dataclass(frozen=True)
class Observation:
    node: str
    t0: float  # monotonic: request sent
    t1: float  # monotonic: answer received, or given up
    pid: int | None  # the agent process asked (None: none was alive)
    doc: dict[str, Any] | None  # the status document; None without an answer
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.doc is not None

    @property
    def local(self) -> dict[str, Any] | None:
        """Protected guests its hypervisor ran at request time; None if it could not look."""
        if self.doc is None:
            return None
        local: dict[str, Any] | None = self.doc.get("local")
        return local


@dataclass(frozen=True)
class Death:
    node: str
    pid: int
    at: float  # monotonic: first poll that found the process gone


@dataclass(frozen=True)
class Interval:
    node: str
    guest: str
    start: float
    end: float
    generation: int | None


class ClusterWatch:
    """Background sampler of one cluster. Use as a context manager (stops its threads)."""

    def __init__(
        self,
        cluster: LocalCluster,
        interval_s: float = 0.1,
        request_timeout_s: float = 0.5,
        pid_poll_s: float = 0.02,
    ) -> None:
        self.cluster = cluster
        self.interval_s = interval_s
        self.request_timeout_s = request_timeout_s
        self.pid_poll_s = pid_poll_s
        self.nodes = cluster.nodes()
        self._listen = {n: cluster.api_listen(n) for n in self.nodes}
        self._token = {n: cluster.token(n) for n in self.nodes}
        self._lock = threading.Lock()
        self._observations: list[Observation] = []
        self._deaths: list[Death] = []
        self._pids: dict[str, int | None] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0
        self.stopped_at: float | None = None
        # wall = monotonic + offset (one machine, a few seconds: good to a millisecond)
        self.wall_offset = time.time() - time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ClusterWatch:
        self.started_at = time.monotonic()
        for node in self.nodes:
            self._pids[node] = self.cluster.agent_pid(node)
        self._threads = [threading.Thread(target=self._watch_pids, daemon=True)]
        self._threads += [
            threading.Thread(target=self._sample, args=(node,), daemon=True) for node in self.nodes
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()

    def __enter__(self) -> ClusterWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sampling threads ------------------------------------------------------------------

    def _watch_pids(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for node in self.nodes:
                pid = self._pids.get(node)
                if pid is not None and not pid_alive(pid):
                    with self._lock:
                        self._deaths.append(Death(node, pid, now))
                    self._pids[node] = pid = None
                if pid is None:
                    new = self.cluster.agent_pid(node)
                    if new is not None and not any(
                        d.pid == new and d.node == node for d in self._deaths
                    ):
                        self._pids[node] = new
            self._stop.wait(self.pid_poll_s)

    def _sample(self, node: str) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            pid = self.cluster.agent_pid(node)
            doc: dict[str, Any] | None = None
            error = ""
            if pid is None:
                error = "no live process"
            else:
                try:
                    doc = http_get_json(
                        self._listen[node], "/v1/status", self._token[node], self.request_timeout_s
                    )
                except (OSError, ValueError) as exc:
                    error = str(exc) or type(exc).__name__
            obs = Observation(node, t0, time.monotonic(), pid, doc, error)
            with self._lock:
                self._observations.append(obs)
            self._stop.wait(max(0.0, t0 + self.interval_s - time.monotonic()))

    # -- reading the record ----------------------------------------------------------------

    def observations(self, node: str | None = None) -> list[Observation]:
        with self._lock:
            obs = list(self._observations)
        return [o for o in obs if node is None or o.node == node]

    def answers(self, node: str | None = None) -> list[Observation]:
        return [o for o in self.observations(node) if o.answered]

    def deaths(self, node: str | None = None) -> list[Death]:
        with self._lock:
            deaths = list(self._deaths)
        return [d for d in deaths if node is None or d.node == node]

    def latest(self, node: str) -> Observation | None:
        """The latest answered observation of `node`."""
        answers = self.answers(node)
        return answers[-1] if answers else None

    def latest_after(self, node: str, t: float) -> Observation | None:
        """The latest answer of `node` whose request was sent after monotonic time `t`."""
        latest = self.latest(node)
        return latest if latest is not None and latest.t0 > t else None

    def wall(self, t: float) -> float:
        return t + self.wall_offset

    def rel(self, t: float) -> str:
        """`t` as seconds since the watch started, for messages."""
        return f"{t - self.started_at:+.3f}s"

    # -- the checks --------------------------------------------------------------------------

    def guests_seen(self) -> set[str]:
        seen: set[str] = set()
        for o in self.answers():
            assert o.doc is not None
            seen |= set(o.doc["guests"])
            seen |= set(o.local or {})
        return seen

    def intervals(self, guest: str) -> list[Interval]:
        """When each node might have been running `guest` (see the module docstring)."""
        end_of_watch = self.stopped_at if self.stopped_at is not None else time.monotonic()
        out: list[Interval] = []
        for node in self.nodes:
            # (time, order, kind, observation or death); at equal times closing goes first.
            events: list[tuple[float, int, str, Any]] = []
            for o in self.answers(node):
                local = o.local
                if local is None:
                    continue  # its hypervisor could not be observed: no information
                if guest in local:
                    events.append((o.t0, 1, "run", o))
                else:
                    events.append((o.t1, 0, "stop", o))
            for d in self.deaths(node):
                events.append((d.at, 0, "death", d))
            events.sort(key=lambda e: (e[0], e[1]))
            start: float | None = None
            generation: int | None = None
            for t, _, kind, item in events:
                if kind == "run":
                    if start is None:
                        start = t
                        generation = item.local[guest].get("generation")
                elif start is not None:
                    out.append(Interval(node, guest, start, t, generation))
                    start = None
            if start is not None:
                out.append(Interval(node, guest, start, end_of_watch, generation))
        return out

    def overlaps(self, guest: str) -> list[str]:
        found = []
        ivs = self.intervals(guest)
        for i, a in enumerate(ivs):
            for b in ivs[i + 1 :]:
                if a.node != b.node and a.start < b.end and b.start < a.end:
                    found.append(
                        f"{guest} maybe running on {a.node} (gen {a.generation}) "
                        f"[{self.rel(a.start)}, {self.rel(a.end)}] and on {b.node} "
                        f"(gen {b.generation}) [{self.rel(b.start)}, {self.rel(b.end)}]"
                    )
        return found

    def assert_single_copy(self) -> None:
        """No guest was ever (maybe) running on two nodes at the same time."""
        problems = [p for g in sorted(self.guests_seen()) for p in self.overlaps(g)]
        assert not problems, "two copies of a guest:\n" + "\n".join(problems)

    def assert_runs_only_what_it_owns(self) -> None:
        """Rule 1 as seen from outside: whenever a node's hypervisor runs a protected guest,
        that node's own committed view (read after the observation) names it as the owner at
        exactly the generation the running instance carries."""
        problems = []
        for o in self.answers():
            assert o.doc is not None
            for guest, seen in (o.local or {}).items():
                rec = o.doc["guests"].get(guest)
                if rec is None or rec["owner"] != o.node or rec["generation"] != seen["generation"]:
                    problems.append(
                        f"{self.rel(o.t0)} {o.node} runs {guest} at generation "
                        f"{seen['generation']} but its committed view says {rec and rec['owner']}"
                        f" at generation {rec and rec['generation']}"
                    )
        assert not problems, "\n".join(problems[:20])

    def assert_moved_only_after_fence(self, guest: str, victim: str, generation: int) -> int:
        """In every committed view any node served: once `guest`, owned by `victim` at
        `generation`, has a later generation, `victim` is fenced with a confirmed (ok) result,
        or has rejoined after being fenced. Returns how many views showed the guest moved."""
        moved_views = 0
        problems = []
        for o in self.answers():
            assert o.doc is not None
            rec = o.doc["guests"].get(guest)
            if rec is None or rec["generation"] <= generation:
                continue
            moved_views += 1
            v = o.doc["nodes"].get(victim, {})
            fenced = v.get("state") == "fenced" and v.get("fence", {}).get("last_result") == "ok"
            rejoined = v.get("state") == "up" and str(v.get("reason", "")).startswith(
                "rejoined (was fenced)"
            )
            if not (fenced or rejoined):
                problems.append(
                    f"{self.rel(o.t0)} {o.node}'s view: {guest} is at {rec['owner']} generation "
                    f"{rec['generation']} but {victim} is {v.get('state')} (fence {v.get('fence')})"
                )
        assert not problems, "\n".join(problems[:20])
        return moved_views

    def first_running(self, guest: str, nodes: list[str], after: float) -> Observation | None:
        """The first answer from one of `nodes`, sent after `after`, whose hypervisor ran
        `guest`."""
        for o in self.answers():
            if o.node in nodes and o.t0 > after and guest in (o.local or {}):
                return o
        return None


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_lines(cluster: LocalCluster, node: str, pattern: str) -> list[tuple[float, re.Match[str]]]:
    """(wall-clock time, match) for every line of `node`'s agent log that matches `pattern`.
    The agents log local time with millisecond resolution."""
    out = []
    regex = re.compile(pattern)
    with contextlib.suppress(FileNotFoundError):
        for line in cluster.log_file(node).read_text(errors="replace").splitlines():
            stamp = _LOG_TIME.match(line)
            found = regex.search(line)
            if stamp and found:
                when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append((when, found))
    return out


def power_events(cluster: LocalCluster, node: str) -> list[tuple[float, str]]:
    """(wall-clock time, "set power 0" ...) lines of `node`'s simulated BMC (chassis.sh)."""
    path = cluster.run_dir / "bmc" / node / f"{node}.events"
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            stamp, _, what = line.partition(" ")
            with contextlib.suppress(ValueError):
                out.append((float(stamp), what.strip()))
    return out
