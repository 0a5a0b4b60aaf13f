"""The events2 parser against real output: DRBD 8.4 captured in TCG guests, DRBD 9 from
drbd-utils' own tests (tests/fixtures/drbd/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haagent.ports import DiskState, ReplicaObservation, ReplicaRole
from haagent.resources.drbd_events import (
    Action,
    Events2Error,
    Kind,
    ResourceTracker,
    observations_from_dump,
    parse_line,
    parse_stream,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "drbd"
PRI, SEC = ReplicaRole.PRIMARY, ReplicaRole.SECONDARY
UP = DiskState.UP_TO_DATE


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def dump(name: str, resource: str = "r0") -> ReplicaObservation:
    return observations_from_dump(fixture(name))[resource]


def test_every_captured_line_parses() -> None:
    files = sorted(FIXTURES.glob("*-*.txt"))
    assert len(files) >= 15
    for path in files:
        if path.name == "capture-notes.txt":
            continue
        events = parse_stream(path.read_text())
        assert events, path
        if "watch" in path.name:
            assert all(e.timestamp is not None for e in events)


def test_parse_line_keeps_drbds_words() -> None:
    line = (
        "2026-12-04T15:49:43.927926+00:00 response helper name:r0 peer-node-id:0 "
        "conn-name:peer helper:fence-peer status:1792"
    )
    e = parse_line(line)
    assert e is not None
    assert (e.action, e.kind, e.resource) == (Action.RESPONSE, Kind.HELPER, "r0")
    assert e.timestamp == "2026-12-04T15:49:43.927926+00:00"
    assert e.fields["helper"] == "fence-peer" and e.fields["status"] == "1792"
    end = parse_line("exists -")
    assert end is not None and end.kind is Kind.END_OF_DUMP
    assert parse_line("   ") is None
    # A change with nothing but the object's name: real 8.4 prints these.
    empty = parse_line("change resource name:r0")
    assert empty is not None and dict(empty.fields) == {"name": "r0"}


@pytest.mark.parametrize(
    "line",
    [
        "hello world",
        "exists",
        "change resource role:Primary",  # no name
        "change resource name:r0 garbage",
        "exists - extra:1",
        "teleport resource name:r0",
    ],
)
def test_garbage_is_an_error(line: str) -> None:
    with pytest.raises(Events2Error):
        parse_line(line)


# --- DRBD 8.4, status dumps -------------------------------------------------------------------


def test_84_both_inconsistent_before_the_first_sync() -> None:
    assert dump("84-status-connected-inconsistent.txt") == ReplicaObservation(
        "r0", SEC, DiskState.INCONSISTENT, True, SEC, DiskState.INCONSISTENT
    )


def test_84_connected_primary_and_secondary() -> None:
    assert dump("84-status-primary-uptodate.txt") == ReplicaObservation(
        "r0", PRI, UP, True, SEC, UP
    )
    assert dump("84-status-secondary-uptodate.txt") == ReplicaObservation(
        "r0", SEC, UP, True, PRI, UP
    )


def test_84_cut_off_peer_is_not_reported_from_stale_state() -> None:
    # DRBD keeps "peer-disk:Outdated" (what the fence-peer handler said) while Connecting;
    # the observation says only what is known now: not connected.
    assert dump("84-status-primary-peer-fenced.txt") == ReplicaObservation(
        "r0", PRI, UP, False, None, None
    )
    state = ResourceTracker()
    state.feed(parse_stream(fixture("84-status-primary-peer-fenced.txt")))
    r0 = state.get("r0")
    assert r0 is not None
    assert next(iter(r0.peers.values())).peer_disks == {0: "Outdated"}


def test_84_a_cut_off_secondary_still_says_uptodate_until_outdated() -> None:
    # Real 8.4: the Secondary that lost its Primary keeps UpToDate; only the Raft record
    # ("peer outdated") or an explicit outdate tells otherwise.
    assert dump("84-status-secondary-cut-off.txt").disk is UP
    assert dump("84-status-secondary-outdated.txt") == ReplicaObservation(
        "r0", SEC, DiskState.OUTDATED, False, None, None
    )


def test_84_a_split_brain_dump_alone_shows_standalone_not_split_brain() -> None:
    for name in ("84-status-split-brain-primary1.txt", "84-status-split-brain-primary2.txt"):
        obs = dump(name)
        assert (obs.role, obs.connected, obs.split_brain) == (PRI, False, False)


# --- DRBD 8.4, watch streams ------------------------------------------------------------------


def replay(name: str) -> list[tuple[str, ResourceTracker]]:
    """Each line of a stream with a snapshot of the tracker after it."""
    out = []
    tracker = ResourceTracker()
    for line in fixture(name).splitlines():
        event = parse_line(line)
        assert event is not None
        tracker.apply(event)
        snap = ResourceTracker()
        snap._states = dict(tracker._states)
        snap.dump_complete = tracker.dump_complete
        out.append((line, snap))
    return out


def test_84_primary_stream_fence_peer_freezes_then_resumes() -> None:
    steps = replay("84-watch-guest1.txt")
    first_cut = next(i for i, (line, _) in enumerate(steps) if "suspended:fencing" in line)
    r0 = steps[first_cut][1].get("r0")
    assert r0 is not None and r0.io_suspended and r0.suspended == "fencing"
    # The same state change (same timestamp) reports the lost connection on the next line.
    r0 = steps[first_cut + 1][1].get("r0")
    assert r0 is not None and "NetworkFailure" in steps[first_cut + 1][0]
    obs = r0.observation()
    assert (obs.role, obs.connected) == (PRI, False)
    call = next(i for i in range(first_cut, len(steps)) if "call helper" in steps[i][0])
    r0 = steps[call][1].get("r0")
    assert r0 is not None
    (pending,) = r0.pending_helpers
    assert (pending.helper, pending.peer) == ("fence-peer", "peer")
    done = call + 1
    r0 = steps[done][1].get("r0")
    assert r0 is not None and not r0.pending_helpers
    assert r0.helpers[-1].exit_code == 7 and r0.io_suspended  # resumes a few lines later
    resumed = next(i for i in range(done, len(steps)) if "suspended:no" in steps[i][0])
    r0 = steps[resumed][1].get("r0")
    assert r0 is not None and not r0.io_suspended


def test_84_primary_stream_ends_in_a_split_brain_that_stays_flagged() -> None:
    steps = replay("84-watch-guest1.txt")
    tracker = steps[-1][1]
    obs = tracker.observations()["r0"]
    assert (obs.role, obs.connected, obs.split_brain) == (PRI, False, True)
    # The connection object was destroyed (StandAlone after the split brain).
    r0 = tracker.get("r0")
    assert r0 is not None and r0.peers == {}
    # A restarted events2 cannot show a past split brain: the tracker keeps it.
    tracker.restart()
    tracker.feed(parse_stream(fixture("84-status-split-brain-primary1.txt")))
    assert tracker.observations()["r0"].split_brain


def test_84_secondary_stream_outdated_then_resync_inconsistent_then_uptodate() -> None:
    disks = []
    for _, tracker in replay("84-watch-guest2.txt"):
        obs = tracker.observations().get("r0")
        if obs is not None and (not disks or disks[-1] != obs.disk):
            disks.append(obs.disk)
    assert disks == [
        DiskState.DISKLESS,
        DiskState.CONSISTENT,  # Attaching: not known to be current
        DiskState.INCONSISTENT,
        UP,
        DiskState.OUTDATED,  # drbd.sh outdate while cut off
        DiskState.INCONSISTENT,  # resync target after the link came back
        UP,
    ]


def test_84_unfence_peer_runs_after_resync() -> None:
    tracker = ResourceTracker()
    tracker.feed(parse_stream(fixture("84-watch-guest1.txt")))
    r0 = tracker.get("r0")
    assert r0 is not None
    assert [h.helper for h in r0.helpers][-3:] == [
        "fence-peer",
        "initial-split-brain",
        "split-brain",
    ]
    helpers = [
        e.fields["helper"]
        for e in parse_stream(fixture("84-watch-guest1.txt"))
        if e.kind is Kind.HELPER and e.action is Action.CALL
    ]
    assert helpers.count("fence-peer") == 2 and helpers.count("unfence-peer") == 2


def test_changes_that_do_not_matter_do_not_wake() -> None:
    tracker = ResourceTracker()
    tracker.feed(parse_stream(fixture("84-status-primary-uptodate.txt")))
    line = parse_line("change resource name:r0")
    assert line is not None and not tracker.apply(line)
    path = parse_line(
        "change path name:r0 peer-node-id:0 conn-name:peer local:ipv4:1.2.3.4:7789 "
        "peer:ipv4:5.6.7.8:7790 established:yes"
    )
    assert path is not None and not tracker.apply(path)
    role = parse_line("change resource name:r0 role:Secondary")
    assert role is not None and tracker.apply(role)


# --- DRBD 9 (drbd-utils' expected outputs) ----------------------------------------------------


def final(name: str) -> ReplicaObservation:
    tracker = ResourceTracker()
    tracker.feed(parse_stream(fixture(name)))
    return tracker.observations()["some-resource"]


def test_9_create_then_connect_and_promote() -> None:
    # The connection came up without a role word yet: the peer's role is not known.
    assert final("9-events2-all-create-change.txt") == ReplicaObservation(
        "some-resource", PRI, UP, True, None, UP
    )


def test_9_sync_source_with_statistics() -> None:
    assert final("9-events2-sync-statistics.txt") == ReplicaObservation(
        "some-resource", SEC, UP, True, SEC, DiskState.INCONSISTENT
    )


def test_9_peer_becomes_primary() -> None:
    assert final("9-events2-may-promote-peer-role.txt") == ReplicaObservation(
        "some-resource", SEC, UP, True, PRI, None
    )


def test_9_helper_call_and_response() -> None:
    tracker = ResourceTracker()
    tracker.feed(parse_stream(fixture("9-events2-all-create-helper.txt")))
    r = tracker.get("some-resource")
    assert r is not None
    (h,) = r.helpers
    assert (h.helper, h.peer, h.status) == ("before-resync-target", "some-peer", 1)
    assert r.observation().disk is DiskState.DISKLESS


def test_destroy_removes_the_resource() -> None:
    tracker = ResourceTracker()
    tracker.feed(parse_stream(fixture("84-status-primary-uptodate.txt")))
    gone = parse_line("destroy resource name:r0")
    assert gone is not None and tracker.apply(gone)
    assert tracker.observations() == {}


def test_the_parser_is_pure() -> None:
    # DESIGN: "the events2 parser is pure": no I/O, no clock, no process.
    import ast

    import haagent.resources.drbd_events as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    imported = {
        (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= {"__future__", "collections", "dataclasses", "enum", "haagent"}, imported
