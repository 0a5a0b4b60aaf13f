"""FakeEvents2: what the simulator's fake DRBD prints, and the agent's view of it (a fake).

The daemon never sees DRBD itself: it reads `drbdsetup events2` lines through a watcher
(haagent.resources.drbd) that folds them with the production parser
(haagent.resources.drbd_events). The simulator does the same, so an agent in the simulator
sees exactly what the parser makes of DRBD 8.4's output, not a convenient summary:

- `Reported` is what DRBD 8.4 reports for one side of a resource, object by object, in
  DRBD's own words. It includes the values real 8.4 keeps after a disconnect (a peer disk
  `Outdated` that a fence-peer handler set stays so while `Connecting` and after a split
  brain's `StandAlone`); the parser hides them (peer role and disk only while connected).
- `change_lines` turns two reports into the `change`/`create`/`destroy` lines events2
  prints, in the order the real 8.4 stream has them (resource, connection, device,
  peer-device; tests/fixtures/drbd/84-watch-*.txt), and `dump_lines` prints the initial
  `exists` dump a freshly started events2 prints.
- `FakeWatcher` is one resource's watcher in one agent: it feeds the lines to a
  `ResourceTracker`. events2 may die (the watcher restarts it after a back-off: the state is
  unknown until the new dump is complete, as `DrbdWatcher.current` says) or stall (lines are
  held back and arrive late, in order: a lagging view the agent cannot tell from a current one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from haagent.ports import ReplicaObservation
from haagent.resources.drbd_events import ResourceTracker, parse_line

# DRBD 8.4 names the one peer "peer" with node id 0 and has one volume (0, minor 0).
_IDS: Mapping[str, str] = {
    "resource": "",
    "connection": "peer-node-id:0 conn-name:peer",
    "device": "volume:0 minor:0",
    "peer-device": "peer-node-id:0 conn-name:peer volume:0",
}
_ORDER = ("resource", "connection", "device", "peer-device")

Reported = dict[str, dict[str, str]]
"""Object kind -> its fields (DRBD's words), without the keys that name the object."""


def _line(action: str, kind: str, resource: str, fields: Mapping[str, str]) -> str:
    words = [action, kind, f"name:{resource}"]
    if _IDS[kind]:
        words.append(_IDS[kind])
    words += [f"{k}:{v}" for k, v in fields.items()]
    return " ".join(words)


def dump_lines(resource: str, now: Reported) -> list[str]:
    """What `events2 --now` (and a restarted `events2`) prints first: one `exists` line per
    object, then `exists -`."""
    out = [_line("exists", k, resource, now[k]) for k in _ORDER if k in now]
    return [*out, "exists -"]


def change_lines(resource: str, old: Reported, new: Reported) -> list[str]:
    """The lines events2 prints for the step from `old` to `new`. A `change` line carries
    only the keys that changed; objects that vanish are destroyed peer-device first (as
    after a split brain's StandAlone)."""
    out: list[str] = []
    for kind in _ORDER:
        if kind not in new:
            continue
        if kind not in old:
            out.append(_line("create", kind, resource, new[kind]))
            continue
        changed = {k: v for k, v in new[kind].items() if old[kind].get(k) != v}
        if changed:
            out.append(_line("change", kind, resource, changed))
    for kind in reversed(_ORDER):
        if kind in old and kind not in new:
            out.append(_line("destroy", kind, resource, {}))
    return out


def helper_line(resource: str, helper: str, status: int | None, volume: bool = False) -> str:
    """`call helper ...` (status None) or `response helper ... status:N` (N = exit << 8).
    8.4 names the volume for per-device helpers (split-brain), not for fence-peer."""
    ids = _IDS["peer-device"] + " minor:0" if volume else _IDS["connection"]
    action = "call" if status is None else "response"
    tail = "" if status is None else f" status:{status}"
    return f"{action} helper name:{resource} {ids} helper:{helper}{tail}"


@dataclass
class FakeWatcher:
    """One agent's events2 watcher for one resource (see the module doc)."""

    resource: str
    tracker: ResourceTracker = field(default_factory=ResourceTracker)
    running: bool = False
    stalled: bool = False
    backlog: list[str] = field(default_factory=list)
    lines_seen: int = 0  # every line the parser folded (tests compare them with real 8.4)
    log: list[str] | None = None  # when a list: every folded line, for tests

    def start(self, now: Reported) -> None:
        """events2 (re)started: its fresh dump replaces what the tracker knew."""
        self.tracker.restart()
        self.running = True
        self.stalled = False
        self.backlog.clear()
        self._feed(dump_lines(self.resource, now))

    def die(self) -> None:
        """events2 exited: nothing is known until it is started again."""
        self.running = False
        self.stalled = False
        self.backlog.clear()
        self.tracker.restart()

    def stall(self) -> None:
        if self.running:
            self.stalled = True

    def catch_up(self) -> None:
        """A stalled events2 goes on: the held lines arrive, in order."""
        self.stalled = False
        held, self.backlog = self.backlog, []
        self._feed(held)

    def deliver(self, lines: list[str]) -> None:
        if not self.running:
            return  # nobody reads: lost (a restarted events2 prints a fresh dump)
        if self.stalled:
            self.backlog.extend(lines)
            return
        self._feed(lines)

    def _feed(self, lines: list[str]) -> None:
        for line in lines:
            event = parse_line(line)
            if event is not None:
                self.tracker.apply(event)
                self.lines_seen += 1
                if self.log is not None:
                    self.log.append(line)

    @property
    def current(self) -> bool:
        """As `DrbdWatcher.current`: events2 runs and its initial dump is complete."""
        return self.running and self.tracker.dump_complete

    def observation(self) -> ReplicaObservation | None:
        if not self.current:
            return None
        return self.tracker.observations().get(self.resource)
