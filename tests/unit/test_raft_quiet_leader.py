"""A leader with nothing but heartbeats to commit reads its peers once per period (vendored
patch `quietLeaderAfter`, haagent/vendor/pysyncobj/PATCHES.md).

Real pysyncobj over TCP on loopback. Without the patch an idle leader's tick thread woke for
every acknowledgement and every forwarded heartbeat: 21 of its 28 wake-ups a second in an idle
3-node `balanced` cluster (issue 7), each costing more in cold caches than in work. A quiet
leader sleeps on its own submitted commands alone and reads every socket right before the tick
its timer brings. What must hold besides: the silence of a peer counts from when the leader
appended its heartbeat, not from the later commit; any other command makes the leader read at
once for `quiet_leader_after_s`; a connection in its handshake (a restarted peer, a stranger)
is read at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from haagent.commands import Heartbeat, SetMaintenance
from haagent.consensus import RAFT_PORT_LIMITS, RaftConsensus, append_entries_period
from haagent.ports import OutcomeKind
from tests.unit.test_consensus import until
from tests.unit.test_raft_commit_notice import ELECTION_MIN_S, SlowTrio, started

PERIOD_S = append_entries_period(ELECTION_MIN_S)  # 0.2 s
QUIET_AFTER_S = 0.6  # shorter than the shipped 5 s, so the tests need not wait that long
TRAFFIC_S = 2.0


@pytest.fixture
async def quiet_trio(tmp_path: Path) -> AsyncIterator[SlowTrio]:
    """As `slow_trio`, with a leader that turns quiet `QUIET_AFTER_S` after its last command
    other than a heartbeat. Every replica still running is stopped at the end."""
    t = SlowTrio(tmp_path)
    t.quiet_leader_after_s = QUIET_AFTER_S
    try:
        yield t
    finally:
        t.stop_all()


def quiet(c: RaftConsensus) -> Callable[[], bool]:
    """Whether `c` would now sleep quietly (white box: the patch's own rule, read only)."""
    sync = c._sync
    assert sync is not None
    return lambda: bool(sync._SyncObj__isQuiet())  # type: ignore[attr-defined]


def count_ticks(c: RaftConsensus) -> list[int]:
    """Count the ticks of `c`'s Raft thread from now on (each follows one wake-up)."""
    sync = c._sync
    assert sync is not None
    tick = sync._onTick
    ticks = [0]

    def counting(timeToWait: float = 0.0) -> None:  # noqa: N803 (pysyncobj's name)
        ticks[0] += 1
        tick(timeToWait)

    sync._onTick = counting  # type: ignore[method-assign]
    return ticks


async def heartbeats_of(
    proposer: RaftConsensus, leader: RaftConsensus, seconds: float
) -> list[tuple[float, float, float]]:
    """`proposer`'s heartbeats, one after the other every 0.15 s for `seconds`: for each,
    when it was proposed, when its outcome came back, and when the leader saw it
    (`HeartbeatSeen.at`, read once the outcome is back: the leader applied it before it
    told anyone of the commit)."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        proposed = time.monotonic()
        outcome = await proposer.propose(Heartbeat(proposer.node, f"{proposer.node}-a"), 3)
        heard = time.monotonic()
        assert outcome.kind is OutcomeKind.ACCEPTED, outcome
        seen = leader.view().heartbeats[proposer.node]
        assert seen.seq == proposer.view().state.node(proposer.node).heartbeat_seq
        out.append((proposed, heard, seen.at))
        await asyncio.sleep(0.15)
    return out


async def test_a_quiet_leader_wakes_about_once_a_period_while_heartbeats_flow(
    quiet_trio: SlowTrio,
) -> None:
    leader, followers = await started(quiet_trio)
    await until("the leader is quiet", quiet(leader))
    ticks = count_ticks(leader)
    began = time.monotonic()
    await asyncio.gather(*(heartbeats_of(f, leader, TRAFFIC_S) for f in followers))
    per_period = ticks[0] / (time.monotonic() - began) * PERIOD_S
    # Quiet: one tick per idle append (plus a stray one). Reading at once, as before the
    # patch: one per append, per acknowledgement (2 per append) and per forwarded heartbeat
    # (2 every 0.15 s), ~5.7 per period.
    assert per_period < 2.0, ticks[0]


async def test_silence_counts_from_the_leaders_append_not_its_commit(
    quiet_trio: SlowTrio,
) -> None:
    """A quiet leader applies a heartbeat one period after appending it (it reads the
    acknowledgements at its next tick); counted from the apply, every peer's silence would
    start a period late and so would every failover."""
    leader, (follower, _) = await started(quiet_trio)
    await until("the leader is quiet", quiet(leader))
    for proposed, heard, seen_at in await heartbeats_of(follower, leader, TRAFFIC_S):
        # Safe: the append follows the proposal (the proposer's lease counts from before it).
        assert proposed <= seen_at
        # Early: the commit notice reached the proposer a period after the append (it left
        # with the idle append that carried the commit); the apply came with it.
        assert heard - seen_at >= PERIOD_S / 2, (proposed, heard, seen_at)


async def test_any_other_command_makes_the_leader_read_at_once_for_a_while(
    quiet_trio: SlowTrio,
) -> None:
    leader, (follower, _) = await started(quiet_trio)
    await until("the leader is quiet", quiet(leader))
    proposed = time.monotonic()
    outcome = await follower.propose(SetMaintenance(follower.node, True, by="test", at=0.0), 2)
    assert outcome.kind is OutcomeKind.ACCEPTED, outcome
    assert not quiet(leader)()
    await until("the leader is quiet again", quiet(leader))
    # A failover's next step (a forwarded GuestStarting ...) within the window does not wait
    # for the leader's next tick.
    assert time.monotonic() - proposed >= QUIET_AFTER_S


async def test_a_connection_in_its_handshake_is_read_at_once(quiet_trio: SlowTrio) -> None:
    """A peer dialling in (restarted, or a stranger) is accepted at the leader's next tick at
    the latest; from then on the leader reads at once, until the handshake completes or its
    deadline closes the connection."""
    leader, _ = await started(quiet_trio)
    await until("the leader is quiet", quiet(leader))
    host, port = leader._addresses[leader.node].rsplit(":", 1)
    sync = leader._sync
    assert sync is not None
    in_handshake = sync._SyncObj__transport._unknownConnections  # type: ignore[attr-defined]
    with contextlib.closing(socket.create_connection((host, int(port)))):
        await until("the leader accepted it", lambda: bool(in_handshake))
        # Steadily, not for an instant (a send in progress is not quiet either): every
        # sample taken while the handshake was open, before and after, says so.
        samples = []
        while len(samples) < 20:
            before, now_quiet, after = bool(in_handshake), quiet(leader)(), bool(in_handshake)
            assert before, "the handshake deadline is a second away at the earliest"
            if after:
                samples.append(now_quiet)
            await asyncio.sleep(0.01)
        assert not any(samples), samples
        deadline = 2 * RAFT_PORT_LIMITS["handshakeTimeout"] + 1.0
        await until("the handshake deadline closes it", quiet(leader), timeout_s=deadline)
