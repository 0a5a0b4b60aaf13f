"""Recent committed transitions, for `GET /v1/events` and the admin at 3 a.m.

Source and why: a bounded in-memory ring fed by the commands this agent applies (pysyncobj's
tick thread calls `EventRing.record` right after `apply`), not a part of the replicated
state. Putting a history into the replicated state would grow every snapshot and every
replica, and would make a display feature a part of what all agents must apply identically;
the log already is the history. Every agent applies the same committed sequence, so the rings
of two agents agree on every index both hold; they differ only in how far back they reach
(an agent knows what it applied since it started: after a restart, the entries replayed from
its journal since the last snapshot, then everything new).

Contract:
- Only commands that changed the state (accepted by `apply`) are kept, and never heartbeats
  (one per node per second would push everything else out): joins, leaves, failures, fences
  and their results, assignments (moves), starts, stops with their reasons, errors, admin
  actions with who did them, replica changes, and command types added later (generically).
- At most `capacity` events (default `EVENTS_KEPT`); each event's command is cut to
  `MAX_LIST_ITEMS` items per list, so a 10,000-guest assignment costs a bounded entry.
- `index` is the Raft-applied index of this agent's state after the command (the same on
  every agent for the same entry); `at` is the proposer's wall clock (display only, never
  compared across nodes).
- Thread-safe: `record` runs in Raft's thread, `page` on the asyncio loop.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from haagent.codec import to_json
from haagent.commands import (
    AssignGuests,
    CleanupGuest,
    Command,
    ConfirmFenced,
    DeclareFailed,
    FenceResult,
    GuestError,
    GuestStopped,
    Heartbeat,
    MoveGuest,
    SetArming,
    SetDesired,
    SetFrozen,
    SetMaintenance,
)

EVENTS_KEPT = 1000
MAX_LIST_ITEMS = 20


def summary(command: Command) -> str:
    """One line for people: what happened and why (the reason the command carries)."""
    c = command
    if isinstance(c, DeclareFailed):
        return f"node {c.node} declared failed by {c.evidence.declared_by}: {c.evidence.detail}"
    if isinstance(c, FenceResult):
        verdict = "fenced" if c.ok else "fence FAILED"
        return f"node {c.node} {verdict} ({c.method.value}): {c.detail}"
    if isinstance(c, ConfirmFenced):
        return f"node {c.node} confirmed powered off by {c.by}"
    if isinstance(c, AssignGuests):
        moves = ", ".join(f"{a.guest}->{a.node}" for a in c.assignments[:MAX_LIST_ITEMS])
        more = len(c.assignments) - MAX_LIST_ITEMS
        return f"assigned {moves}{f' (+{more} more)' if more > 0 else ''}: {c.reason}"
    if isinstance(c, GuestStopped):
        how = "failed" if c.failed else "stopped"
        give_up = f", {c.node} gave up on it" if c.give_up else ""
        return f"guest {c.guest} {how} on {c.node}{give_up}: {c.reason}"
    if isinstance(c, GuestError):
        return f"guest {c.guest} in error: {c.reason}"
    if isinstance(c, SetDesired):
        return f"guest {c.guest} set {c.desired.value} by {c.by}"
    if isinstance(c, SetMaintenance):
        return f"node {c.node} maintenance {'on' if c.on else 'off'} by {c.by}"
    if isinstance(c, (CleanupGuest, MoveGuest, SetArming, SetFrozen)):
        return _admin_verb(c)
    subject = [f"{k} {getattr(c, k)}" for k in ("guest", "node") if hasattr(c, k)]
    return " ".join([c.type_name.replace("_", " "), *subject])


def _admin_verb(c: CleanupGuest | MoveGuest | SetArming | SetFrozen) -> str:
    """The admin verbs of issue 12 part 5: what, by whom, why."""
    if isinstance(c, CleanupGuest):
        what = f"guest {c.guest} failure history cleared"
    elif isinstance(c, MoveGuest):
        what = f"guest {c.guest} to be moved to {c.node}"
    elif isinstance(c, SetArming):
        what = f"cluster disarmed for {c.for_s:g}s" if c.disarm else "cluster armed"
    else:
        what = f"node {c.node} {'frozen' if c.on else 'thawed'}"
    return f"{what} by {c.by}" + (f": {c.reason}" if c.reason else "")


def _bounded(value: Any) -> Any:
    if isinstance(value, list):
        return [_bounded(v) for v in value[:MAX_LIST_ITEMS]]
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    return value


def event(index: int, command: Command) -> dict[str, Any]:
    body = to_json(command)
    for key, value in list(body.items()):
        if isinstance(value, list) and len(value) > MAX_LIST_ITEMS:
            body[f"{key}_total"] = len(value)
    return {
        "index": index,
        "type": command.type_name,
        "at": getattr(command, "at", None),
        "summary": summary(command),
        "command": _bounded(body),
    }


class EventRing:
    def __init__(self, capacity: int = EVENTS_KEPT) -> None:
        self.capacity = capacity
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, index: int, command: Command, accepted: bool) -> None:
        if not accepted or isinstance(command, Heartbeat):
            return
        item = event(index, command)
        with self._lock:
            self._events.append(item)

    def page(self, since: int, limit: int) -> dict[str, Any]:
        """The newest `limit` events with an index above `since`, oldest first;
        `truncated` says older ones above `since` were left out (ask again with a higher
        `since`, or a larger `limit`)."""
        with self._lock:
            newer = [e for e in self._events if e["index"] > since]
            oldest = self._events[0]["index"] if self._events else None
        shown = newer[-limit:] if limit > 0 else []
        return {
            "events": shown,
            "truncated": len(shown) < len(newer),
            "oldest_index": oldest,
            "capacity": self.capacity,
        }
