"""Heartbeats ride on the leader's next append_entries (vendored patch `appendLazily`,
haagent/vendor/pysyncobj/PATCHES.md).

Real pysyncobj over TCP on loopback. As shipped (batching off), every heartbeat of every node
cost the leader an append_entries to each follower, their acknowledgements and an fsync of its
own, and a follower's heartbeat an apply_command_response besides: most of an idle balanced
leader's messages (issue 7). With the patch the leader holds heartbeats (its own and those
forwarded to it) until its next append_entries, appends them together right before it, and
tells each forwarding follower where its heartbeat went inside that same append_entries.
Any other command is appended and sent at once, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from haagent.commands import Heartbeat, SetMaintenance
from haagent.consensus import RaftConsensus, append_entries_period
from haagent.localcluster.ports import free_port
from haagent.ports import OutcomeKind
from haagent.vendor.pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from haagent.vendor.pysyncobj.monotonic import monotonic as raft_clock
from tests.unit.test_consensus import SECRET
from tests.unit.test_raft_commit_notice import ELECTION_MIN_S, SlowTrio, started

# The commit-notice tests' replicas: the robust profile's election timeouts, so a 0.2 s idle
# period, far longer than a loopback round trip plus an fsync, tells an append sent for news
# apart from the period's.
PERIOD_S = append_entries_period(ELECTION_MIN_S)


def record_sends(c: RaftConsensus) -> list[tuple[float, dict[str, Any]]]:
    """Record every message this replica sends (wraps its transport): (when on pysyncobj's
    clock, message)."""
    sync = c._sync
    assert sync is not None
    transport = sync._SyncObj__transport  # type: ignore[attr-defined]
    send = transport.send
    # The leader's last append_entries before the recording began (any send restarts the idle
    # period), so the first recorded one can be told apart too. Read before the recording
    # starts: a send in between is then merely missed, never taken for one sent for news.
    last: float = sync._SyncObj__lastAppendSent  # type: ignore[attr-defined]
    sent: list[tuple[float, dict[str, Any]]] = [(last, {"type": "append_entries", "to": "*"})]

    def recording(node: object, message: dict[str, Any]) -> bool:
        sent.append((raft_clock(), dict(message, to=str(node))))
        return bool(send(node, message))

    transport.send = recording
    return sent


def appends_to(sent: list[tuple[float, dict[str, Any]]], to: str) -> list[tuple[float, Any]]:
    """The append_entries sent to one follower (from the last send before the recording):
    (when, message)."""
    return [(at, m) for at, m in sent if m["type"] == "append_entries" and m["to"] in (to, "*")]


def sent_for_news(appends: list[tuple[float, Any]]) -> list[tuple[float, Any]]:
    """Appends that left before the idle period after the previous one was over (every send
    restarts it, so the period's own append never leaves earlier)."""
    return [s for prev, s in itertools.pairwise(appends) if s[0] - prev[0] < 0.9 * PERIOD_S]


def heartbeat(c: RaftConsensus) -> Heartbeat:
    return Heartbeat(c.node, f"{c.node}-a")


async def test_heartbeats_of_all_nodes_ride_on_the_idle_appends(slow_trio: SlowTrio) -> None:
    leader, followers = await started(slow_trio)
    sent = record_sends(leader)
    proposers = [leader, *followers]
    for _ in range(4):
        outcomes = await asyncio.gather(*(c.propose(heartbeat(c), 3) for c in proposers))
        # Each proposer applied its own heartbeat: its lease was renewed.
        assert [o.kind for o in outcomes] == [OutcomeKind.ACCEPTED] * 3, outcomes
        await asyncio.sleep(0.5 * PERIOD_S)
    addresses = {m["to"] for _, m in sent if m["type"] == "append_entries"} - {"*"}
    assert len(addresses) == 2
    for address in addresses:
        appends = appends_to(sent, address)
        assert sum(len(m.get("entries") or ()) for _, m in appends) == 12, appends
        # As shipped: an append per heartbeat and a commit notice after it. Patched: only
        # the idle period's appends, which carried every heartbeat and every commit.
        assert sent_for_news(appends) == [], appends
    # The followers heard where their heartbeats went inside those appends.
    assert [m for _, m in sent if m["type"] == "apply_command_response"] == []
    replies = [r for _, m in sent for r in m.get("replies", ())]
    assert len(replies) == 8, replies


async def test_a_refused_heartbeat_is_refused_for_its_proposer_only(slow_trio: SlowTrio) -> None:
    leader, (f1, f2) = await started(slow_trio)
    stale = Heartbeat(f2.node, "an-old-incarnation")
    outcomes = await asyncio.gather(
        f1.propose(heartbeat(f1), 3), f2.propose(stale, 3), leader.propose(heartbeat(leader), 3)
    )
    kinds = [o.kind for o in outcomes]
    assert kinds == [OutcomeKind.ACCEPTED, OutcomeKind.REFUSED, OutcomeKind.ACCEPTED], outcomes


async def test_any_other_command_is_appended_at_once(slow_trio: SlowTrio) -> None:
    """Not held: the leader appended it on arrival and answered the forward at once, as
    before (that such an append leaves at once: tests/unit/test_raft_coalescing.py and
    test_raft_commit_notice.py)."""
    leader, (follower, _) = await started(slow_trio)
    sent = record_sends(leader)
    outcome = await follower.propose(SetMaintenance(follower.node, True, by="test", at=0.0), 2)
    assert outcome.kind is OutcomeKind.ACCEPTED, outcome
    answers = [m for _, m in sent if m["type"] == "apply_command_response"]
    assert len(answers) == 1 and answers[0]["to"] == follower._addresses[follower.node], sent
    assert [m for _, m in sent if m.get("replies")] == [], sent


class _Log(SyncObj):
    @replicated
    def submit(self, payload: bytes) -> bytes:
        return payload


def _lone_voter(**extra: Any) -> _Log:
    """One manually ticked voter, lazy appends on."""
    conf = SyncObjConf(
        autoTick=False,
        password=SECRET,
        raftMinTimeout=ELECTION_MIN_S,
        raftMaxTimeout=2 * ELECTION_MIN_S,
        appendEntriesPeriod=PERIOD_S,
        appendEntriesUseBatch=False,
        appendLazily=True,
        commandsWaitLeader=True,
        dynamicMembershipChange=False,
        **extra,
    )
    return _Log(f"127.0.0.1:{free_port()}", [], conf)


def tick_until_it_leads(sync: _Log) -> None:
    deadline = time.monotonic() + 10
    while not sync._isLeader():
        assert time.monotonic() < deadline, "a lone voter leads"
        sync.doTick(0.05)


def test_a_leader_that_steps_down_fails_the_heartbeats_it_holds() -> None:
    """White box, one manually ticked voter: a held (not yet appended) command is failed with
    LEADER_CHANGED when the leader steps down, so its proposer retries at once instead of
    waiting for a timeout."""
    sync = _lone_voter()
    try:
        tick_until_it_leads(sync)
        results: list[tuple[Any, int]] = []
        held = sync._SyncObj__lazyCommands  # type: ignore[attr-defined]
        sync.submit(b"beat", callback=lambda r, e: results.append((r, e)), lazy=True)
        sync._checkCommandsToApply()
        assert len(held) == 1 and results == []  # held for the next append_entries
        sync._SyncObj__setState(0)  # type: ignore[attr-defined]  # _RAFT_STATE.FOLLOWER
        assert results == [(None, FAIL_REASON.LEADER_CHANGED)]
        assert sync._SyncObj__lazyCommands == []  # type: ignore[attr-defined]
    finally:
        sync.destroy()
        sync.doTick(0)


def test_an_answer_without_a_log_position_is_an_unknown_outcome() -> None:
    """A proposer whose answer (apply_command_response, or a reply inside an append_entries)
    names no integer index and term hears UNKNOWN instead of the tick thread raising."""
    conf = SyncObjConf(autoTick=False, password=SECRET, dynamicMembershipChange=False)
    sync = _Log(f"127.0.0.1:{free_port()}", [], conf)
    try:
        results: list[tuple[Any, int]] = []
        waiting = sync._SyncObj__commandsWaitingReply  # type: ignore[attr-defined]
        waiting[7] = lambda r, e: results.append((r, e))
        sync._SyncObj__onApplyCommandResponse(7, None, None, "1")  # type: ignore[attr-defined]
        assert results == [(None, FAIL_REASON.UNKNOWN_OUTCOME)]
    finally:
        sync.destroy()
        sync.doTick(0)


def test_held_commands_are_bounded() -> None:
    with pytest.raises(AssertionError):
        SyncObjConf(raftMinTimeout=0.4, raftMaxTimeout=0.8, lazyCommandsMax=-1).validate()


def _count_wakeups(sync: _Log) -> list[int]:
    """Count the pipe notifications that wake the tick thread for a submitted command."""
    notifier = sync._SyncObj__pipeNotifier  # type: ignore[attr-defined]
    calls = [0]
    notify = notifier.notify

    def counting() -> None:
        calls[0] += 1
        notify()

    notifier.notify = counting
    return calls


def test_a_leader_is_not_woken_for_a_lazy_command_but_its_next_append_carries_it() -> None:
    """White box, one manually ticked voter: a lazy command submitted on the leader wakes
    nothing (the tick thread sleeps on until its next append_entries, which would carry the
    command anyway, and routes it first); any other command still wakes it."""
    sync = _lone_voter()
    try:
        tick_until_it_leads(sync)
        wakeups = _count_wakeups(sync)
        results: list[tuple[Any, int]] = []
        sync.submit(b"beat", callback=lambda r, e: results.append((r, e)), lazy=True)
        assert wakeups == [0]
        deadline = time.monotonic() + 10
        while not results:
            assert time.monotonic() < deadline, "the next append carried it and it committed"
            sync.doTick(0.05)
        assert results == [(b"beat", FAIL_REASON.SUCCESS)]
        sync.submit(b"other", callback=lambda r, e: results.append((r, e)))
        assert wakeups == [1]
    finally:
        sync.destroy()
        sync.doTick(0)


def test_a_node_that_does_not_lead_is_woken_to_forward_a_lazy_command() -> None:
    """Without a leader the command waits (as the commands queue does); a node that is not
    the leader is woken for it, so it forwards the command as soon as it knows a leader."""
    sync = _lone_voter(lazyCommandsMax=2)
    sync._SyncObj__raftState = 0  # type: ignore[attr-defined]  # FOLLOWER, no leader known yet
    try:
        wakeups = _count_wakeups(sync)
        results: list[tuple[Any, int]] = []
        for payload in (b"one", b"two", b"three"):
            sync.submit(payload, callback=lambda r, e: results.append((r, e)), lazy=True)
        assert wakeups == [2]
        # Beyond lazyCommandsMax waiting, a submission fails at once instead of piling up.
        assert results == [(None, FAIL_REASON.QUEUE_FULL)]
        sync._checkCommandsToApply()
        assert len(sync._SyncObj__lazyInbox) == 2  # type: ignore[attr-defined]  # kept
    finally:
        sync.destroy()
        sync.doTick(0)
