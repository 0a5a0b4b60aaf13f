"""The simulator's FakeDrbd follows real DRBD 8.4 (issue 9 item 7).

Each test pins one behaviour the real DRBD 8.4.11 showed in the test guests (the captured
streams in tests/fixtures/drbd/, tests/integration/test_real_drbd.py). Where the fake prints
events2 lines, they are compared with the real capture line by line (timestamps aside, and
leaving out what 8.4 prints that no parser reads: empty `change` lines, the short-lived
`Unconnected`/`Disconnecting` connection states)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from haagent.model import GuestSpec, StorageKind
from haagent.ports import DiskState, ReplicaObservation, ReplicaRole
from haagent.resources.drbd_events import parse_line
from haagent.sim.replicas import (
    REFUSED_NOT_UP_TO_DATE,
    REFUSED_PEER_NOT_OUTDATED,
    REFUSED_TWO_PRIMARIES,
    RESYNC_S,
    FakeDrbd,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "drbd"
SPEC = GuestSpec(
    "db", "db", 256, storage=StorageKind.DRBD, replica_nodes=("n1", "n2"), resource="r0"
)
PRI = ReplicaRole.PRIMARY


class Rig:
    """A FakeDrbd with a hand-driven clock, link and fence-peer handler."""

    def __init__(self) -> None:
        self.now = 0.0
        self.link = True
        self.running: set[str] = set()
        self.handlers: list[tuple[str, Callable[[int], None]]] = []
        self.events: list[tuple[str | None, str, dict[str, object]]] = []
        self.drbd = FakeDrbd(
            [SPEC],
            lambda node, guest, on_exit: self.handlers.append((node, on_exit)),
            lambda at, name, data: self.events.append((at, name, dict(data))),
            lambda: self.now,
        )
        for node in ("n1", "n2"):
            self.drbd.agent_started(node)
            self.drbd.watchers[(node, "r0")].log = []
        self.step()

    def step(self, dt: float = 0.05) -> None:
        self.now += dt
        self.drbd.step(lambda node, domain: node in self.running, lambda a, b: self.link)

    def obs(self, node: str) -> ReplicaObservation:
        replicas, unknown = self.drbd.observe(node)
        assert not unknown
        return replicas["r0"]

    def lines(self, node: str) -> list[str]:
        log = self.drbd.watchers[(node, "r0")].log
        assert log is not None
        return log

    def promote(self, node: str) -> list[str]:
        answers: list[str] = []
        self.drbd.promote(node, "r0", answers.append)
        return answers

    def primary_n1(self) -> None:
        assert self.promote("n1") == [""]
        self.running.add("n1")
        self.step()


def meaningful(lines: list[str]) -> list[str]:
    """Lines without timestamps, without empty `change` lines and transient states."""
    out = []
    for line in lines:
        event = parse_line(line)
        if event is None or event.kind.value == "-":
            continue
        words = line.split()
        if words[0][:1].isdigit():
            words = words[1:]
        ids = {"name", "peer-node-id", "conn-name", "volume", "minor"}
        if event.action.value == "change" and not set(event.fields) - ids:
            continue
        if event.fields.get("connection") in ("Unconnected", "Disconnecting"):
            continue
        out.append(" ".join(words))
    return out


def real(name: str, first: str, last: str, back: int = 0) -> list[str]:
    """The captured lines from the first containing `first` (less `back` lines) to the next
    containing `last`."""
    lines = meaningful((FIXTURES / name).read_text().splitlines())
    start = next(i for i, line in enumerate(lines) if first in line) - back
    end = next(i for i in range(start, len(lines)) if last in lines[i])
    return lines[start : end + 1]


def test_a_primary_that_loses_its_peer_freezes_and_calls_fence_peer_as_84_does() -> None:
    rig = Rig()
    rig.primary_n1()
    seen = len(rig.lines("n1"))
    rig.link = False
    rig.step()
    obs = rig.obs("n1")
    assert (obs.suspended, obs.fence_frozen, obs.fence_pending) == (True, True, True)
    ((node, on_exit),) = rig.handlers
    assert node == "n1"
    version = rig.drbd.resources["r0"].sides["n1"].version
    rig.step()
    assert rig.drbd.resources["r0"].sides["n1"].version == version  # frozen: no write
    on_exit(7)
    rig.step()
    obs = rig.obs("n1")
    assert not obs.suspended and not obs.fence_pending
    assert rig.drbd.resources["r0"].sides["n1"].version > version  # writes alone now
    expected = real("84-watch-guest1.txt", "suspended:fencing", "suspended:no")
    assert meaningful(rig.lines("n1")[seen:]) == expected
    assert ("n1", "drbd_helper", {"resource": "r0", "helper": "fence-peer", "exit": 7}) in (
        rig.events
    )


def test_a_failed_fence_peer_handler_leaves_io_frozen_until_resume_io() -> None:
    rig = Rig()
    rig.primary_n1()
    rig.link = False
    rig.step()
    ((_, on_exit),) = rig.handlers
    on_exit(1)  # "fence-peer helper broken": real 8.4 keeps I/O frozen
    for _ in range(10):
        rig.step()
    obs = rig.obs("n1")
    assert (obs.suspended, obs.fence_frozen, obs.fence_pending) == (True, True, False)
    version = rig.drbd.resources["r0"].sides["n1"].version
    rig.step()
    assert rig.drbd.resources["r0"].sides["n1"].version == version
    rig.drbd.resume_io("n1", "r0")
    rig.step()
    assert not rig.obs("n1").suspended
    assert rig.drbd.resources["r0"].sides["n1"].version > version


def test_a_freeze_ends_when_the_peer_connects_again() -> None:
    """8.4 clears `susp_fen` when the connection is established again (drbd_state.c,
    after_state_ch: "The connection was established again")."""
    rig = Rig()
    rig.primary_n1()
    rig.link = False
    rig.step()
    rig.handlers.pop()[1](1)
    rig.step()
    assert rig.obs("n1").suspended
    rig.link = True
    rig.step()
    obs = rig.obs("n1")
    assert obs.connected and not obs.suspended


def test_promoting_while_disconnected_runs_fence_peer_first_as_84_does() -> None:
    rig = Rig()
    rig.link = False
    rig.step()
    seen = len(rig.lines("n2"))
    answers = rig.promote("n2")
    assert answers == []  # drbdadm primary waits for the handler
    ((node, on_exit),) = rig.handlers
    assert node == "n2"
    assert not rig.drbd.is_primary("r0", "n2")
    on_exit(7)
    assert answers == [""] and rig.drbd.is_primary("r0", "n2")
    expected = real("84-watch-guest2.txt", "helper:fence-peer", "role:Primary")
    assert meaningful(rig.lines("n2")[seen:]) == expected


def test_promotion_fails_when_the_handler_fails_and_exit_6_outdates_this_side() -> None:
    rig = Rig()
    rig.link = False
    rig.step()
    answers = rig.promote("n2")
    rig.handlers.pop()[1](1)
    assert answers == [REFUSED_PEER_NOT_OUTDATED] and not rig.drbd.is_primary("r0", "n2")
    answers = rig.promote("n2")
    rig.handlers.pop()[1](6)  # the peer is Primary: DRBD outdates this side
    assert answers == [REFUSED_NOT_UP_TO_DATE]
    assert rig.obs("n2").disk is DiskState.OUTDATED


def test_outdated_is_a_disk_state_promote_refuses_and_only_a_resync_clears() -> None:
    rig = Rig()
    rig.primary_n1()
    assert rig.drbd.outdate("n1", "r0") != ""  # a Primary cannot be outdated
    assert rig.drbd.outdate("n2", "r0") != ""  # nor a connected Secondary
    assert rig.promote("n2") == [REFUSED_TWO_PRIMARIES]
    rig.link = False
    rig.step()
    assert rig.drbd.outdate("n2", "r0") == ""
    rig.step()
    assert rig.obs("n2").disk is DiskState.OUTDATED
    assert "change device name:r0 volume:0 minor:0 disk:Outdated" in rig.lines("n2")
    rig.drbd.power_off("n2")
    rig.drbd.power_on("n2")
    rig.drbd.agent_started("n2")
    assert rig.obs("n2").disk is DiskState.OUTDATED  # in the metadata: survives power loss
    assert rig.promote("n2") == [REFUSED_NOT_UP_TO_DATE]
    assert rig.handlers[1:] == []  # refused before any fence-peer call
    rig.link = True
    rig.step()
    assert rig.obs("n2").disk is DiskState.INCONSISTENT  # resync target
    rig.step(RESYNC_S)
    assert rig.obs("n2").disk is DiskState.UP_TO_DATE


def test_a_split_brain_runs_its_helpers_and_stands_alone_as_84_does() -> None:
    rig = Rig()
    rig.primary_n1()
    rig.link = False
    rig.step()
    rig.handlers.pop()[1](7)
    rig.promote("n2")
    rig.handlers.pop()[1](7)
    rig.running.add("n2")
    rig.step()  # both write apart
    seen = {n: len(rig.lines(n)) for n in ("n1", "n2")}
    rig.link = True
    rig.step()
    rig.step()
    for node in ("n1", "n2"):
        obs = rig.obs(node)
        assert obs.split_brain and not obs.connected and obs.role is PRI
        expected = real(
            f"84-watch-guest{node[1]}.txt", "helper:initial-split-brain", "destroy connection", 1
        )
        # On guest1 the peer closed the connection while its helper ran (a race the fake
        # does not play: it goes StandAlone once both helpers returned).
        expected = [line for line in expected if "connection:NetworkFailure" not in line]
        assert meaningful(rig.lines(node)[seen[node] :]) == expected
    assert sum(1 for e in rig.events if e[1] == "drbd_split_brain") == 1


def test_stale_peer_values_after_a_disconnect_are_printed_and_hidden_by_the_parser() -> None:
    """8.4 keeps the peer disk a fence-peer handler set (Outdated) while reconnecting; the
    parser reports peer role and disk only while connected."""
    rig = Rig()
    rig.primary_n1()
    assert rig.obs("n1").peer_disk is DiskState.UP_TO_DATE
    assert rig.obs("n1").peer_role is ReplicaRole.SECONDARY
    rig.link = False
    rig.step()
    rig.handlers.pop()[1](4)
    rig.step()
    reported = rig.drbd.resources["r0"].reported["n1"]
    assert reported["peer-device"]["peer-disk"] == "Outdated"
    assert reported["connection"]["connection"] == "Connecting"
    obs = rig.obs("n1")
    assert (obs.connected, obs.peer_role, obs.peer_disk) == (False, None, None)


def test_a_dead_events2_leaves_the_state_unknown_until_the_watcher_restarts_it() -> None:
    rig = Rig()
    rig.primary_n1()
    (watcher,) = rig.drbd.node_watchers("n2")
    watcher.die()
    replicas, unknown = rig.drbd.observe("n2")
    assert replicas == {} and unknown == {"r0"}
    rig.link = False
    rig.step()  # what happens meanwhile is not seen (events2 is not running)
    rig.drbd.agent_started("n2")  # restarted: a fresh dump
    obs = rig.obs("n2")
    assert not obs.connected


def test_a_stalled_events2_shows_an_old_state_until_it_catches_up() -> None:
    rig = Rig()
    rig.primary_n1()
    (watcher,) = rig.drbd.node_watchers("n2")
    watcher.stall()
    rig.link = False
    rig.step()
    assert rig.obs("n2").connected  # stale: the lines wait in the pipe
    watcher.catch_up()
    assert not rig.obs("n2").connected
