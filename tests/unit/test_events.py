"""The events ring behind GET /v1/events: bounded, only state changes, no heartbeats, lists
cut short, pages by applied index. (A real agent's ring, fed by Raft's apply, is checked in
tests/integration/test_api_schema.py.)"""

from __future__ import annotations

from haagent.commands import (
    AssignGuests,
    Assignment,
    DeclareFailed,
    FenceResult,
    Heartbeat,
    SetDesired,
)
from haagent.events import MAX_LIST_ITEMS, EventRing
from haagent.model import DesiredState, FailureEvidence, FenceMethod


def test_only_state_changes_are_kept_and_the_ring_is_bounded() -> None:
    ring = EventRing(capacity=5)
    ring.record(1, Heartbeat("n1", "n1-1"), accepted=True)
    ring.record(2, SetDesired("g1", DesiredState.STOPPED, "ann@host", 0.0), accepted=False)
    assert ring.page(0, 100)["events"] == []
    for i in range(3, 13):
        ring.record(i, SetDesired("g1", DesiredState.STOPPED, "ann@host", 1.5), accepted=True)
    page = ring.page(0, 100)
    assert [e["index"] for e in page["events"]] == [8, 9, 10, 11, 12]
    assert page["oldest_index"] == 8 and page["capacity"] == 5 and not page["truncated"]
    assert page["events"][0]["summary"] == "guest g1 set stopped by ann@host"
    assert page["events"][0]["at"] == 1.5
    newest = ring.page(9, 2)
    assert [e["index"] for e in newest["events"]] == [11, 12] and newest["truncated"]
    assert ring.page(12, 10)["events"] == []


def test_reasons_are_in_the_summary_and_big_commands_are_cut() -> None:
    ring = EventRing()
    evidence = FailureEvidence("n1", 7, 4.2, "no heartbeat for 4.2s", 0.0)
    ring.record(1, DeclareFailed("n3", 7, evidence), accepted=True)
    ring.record(2, FenceResult("n3", 1, False, FenceMethod.AGENT, "timed out", 0.0), True)
    many = tuple(Assignment(f"g{i}", "n2", 1) for i in range(500))
    ring.record(3, AssignGuests(many, "recover from n3", 0.0), accepted=True)
    failed, fence, assign = ring.page(0, 10)["events"]
    assert failed["summary"] == "node n3 declared failed by n1: no heartbeat for 4.2s"
    assert fence["summary"] == "node n3 fence FAILED (agent): timed out"
    assert assign["summary"].endswith("(+480 more): recover from n3")
    assert len(assign["command"]["assignments"]) == MAX_LIST_ITEMS
    assert assign["command"]["assignments_total"] == 500
