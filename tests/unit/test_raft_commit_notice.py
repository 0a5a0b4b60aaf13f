"""A heartbeat's commit reaches followers on the next idle append, any other command's at once
(vendored patch `commitNoticeDelay` + `markCommitUrgent`, haagent/vendor/pysyncobj/PATCHES.md).

Real pysyncobj over TCP on loopback. As shipped (batching off), every commit-index advance
costs each follower an append_entries of its own a few milliseconds after the append that
carried the entry, and its acknowledgement: a third of an idle balanced leader's messages
(issue 7). With the patch a heartbeat's commit waits for the next idle append (which carries
the commit index anyway), while a failover step's commit leaves at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import pytest

from haagent.commands import Heartbeat, SetMaintenance
from haagent.consensus import (
    QUIET_LEADER_AFTER_S,
    RaftConsensus,
    append_entries_period,
    commit_notice_delay,
)
from haagent.ports import OutcomeKind
from haagent.vendor.pysyncobj import SyncObjConf
from tests.unit.test_consensus import SECRET, Trio, joined, until

# Robust-profile election timeouts: a 0.2 s idle period, far longer than a loopback round
# trip plus an fsync, so a commit sent at once is told apart from one that waited.
ELECTION_MIN_S = 1.0
PERIOD_S = append_entries_period(ELECTION_MIN_S)
HEARTBEATS = 6


@dataclass(frozen=True)
class Sent:
    """One append_entries the leader sent to one follower."""

    at: float
    entries: tuple[int, ...]  # log indexes it carried
    commit_index: int


class SlowTrio(Trio):
    """Three replicas with the robust profile's election timeouts."""

    quiet_leader_after_s = QUIET_LEADER_AFTER_S

    def start(self, name: str) -> RaftConsensus:
        c = RaftConsensus(
            name,
            self.addresses,
            SECRET,
            self.tmp_path / name,
            election_timeout_min_s=ELECTION_MIN_S,
            election_timeout_max_s=2 * ELECTION_MIN_S,
            quiet_leader_after_s=self.quiet_leader_after_s,
        )
        c.start()
        self.nodes[name] = c
        return c


def record_appends(c: RaftConsensus) -> dict[str, list[Sent]]:
    """Record the append_entries this replica sends, per destination (wraps its transport)."""
    sync = c._sync
    assert sync is not None
    transport = sync._SyncObj__transport  # type: ignore[attr-defined]
    send = transport.send
    sent: dict[str, list[Sent]] = {}

    def recording(node: object, message: dict[str, object]) -> bool:
        if message.get("type") == "append_entries":
            entries = message.get("entries") or []
            assert isinstance(entries, list)
            commit_index = message["commit_index"]
            assert isinstance(commit_index, int)
            record = Sent(time.monotonic(), tuple(e[1] for e in entries), commit_index)
            sent.setdefault(str(node), []).append(record)
        return bool(send(node, message))

    transport.send = recording
    return sent


def before_idle(prev: Sent, s: Sent) -> bool:
    """`s` left before the idle period after `prev` was over (every send restarts it, so the
    idle append never leaves earlier): it was sent for news, not for the period."""
    return s.at - prev.at < 0.9 * PERIOD_S


def early_notices(appends: list[Sent]) -> list[Sent]:
    """Appends without entries sent before the idle period: commit notices."""
    return [s for prev, s in itertools.pairwise(appends) if not s.entries and before_idle(prev, s)]


async def started(t: SlowTrio) -> tuple[RaftConsensus, list[RaftConsensus]]:
    """All three joined and every commit announced; returns the leader and the followers."""
    await joined(t)
    leader = t.leader()
    assert leader is not None
    await commits_announced(t, leader)
    return leader, [c for c in t.nodes.values() if c is not leader]


async def commits_announced(t: SlowTrio, leader: RaftConsensus) -> None:
    """Every replica heard of the leader's last commit: no commit notice is still waiting for
    `appendEntriesMinInterval` (a Join proposed on the leader returns before its notice
    leaves), so the next append_entries the leader sends owes nothing to what came before."""
    target = leader.view().commit_index
    await until(
        "every replica heard of the last commit",
        lambda: all(c.view().commit_index >= target for c in t.nodes.values()),
    )


def test_the_notice_waits_one_idle_period_at_most() -> None:
    assert commit_notice_delay(0.4) == pytest.approx(0.125)  # balanced
    assert commit_notice_delay(1.0) == pytest.approx(0.2)  # robust
    assert commit_notice_delay(0.3) == pytest.approx(0.3 / 3.2)  # fast
    with pytest.raises(AssertionError):  # a notice held for an election timeout is refused
        SyncObjConf(raftMinTimeout=0.4, raftMaxTimeout=0.8, commitNoticeDelay=0.4).validate()


async def test_a_heartbeat_commit_rides_on_the_next_idle_append(slow_trio: SlowTrio) -> None:
    leader, (follower, _) = await started(slow_trio)
    sent = record_appends(leader)
    for _ in range(HEARTBEATS):
        hb = Heartbeat(follower.node, f"{follower.node}-a")
        outcome = await follower.propose(hb, 2)
        # The proposer applied its heartbeat: the commit reached it (its lease extended).
        assert outcome.kind is OutcomeKind.ACCEPTED, outcome
        await asyncio.sleep(1.5 * PERIOD_S)  # heartbeats are spaced, as in a live cluster
    target = leader.view().commit_index
    await until(
        "every follower learnt the last commit",
        lambda: all(c.view().commit_index >= target for c in slow_trio.nodes.values()),
    )
    assert len(sent) == 2
    for address, appends in sent.items():
        carried = sum(len(s.entries) for s in appends)
        assert carried == HEARTBEATS, (address, appends)
        # As shipped: one early notice per heartbeat. Patched: none.
        assert early_notices(appends) == [], (address, appends)


async def test_any_other_command_is_announced_at_once(slow_trio: SlowTrio) -> None:
    leader, (follower, _) = await started(slow_trio)
    sent = record_appends(leader)
    outcome = await follower.propose(SetMaintenance(follower.node, True, by="test", at=0.0), 2)
    assert outcome.kind is OutcomeKind.ACCEPTED, outcome
    for address, appends in sent.items():
        index = next(i for s in appends for i in s.entries)
        entry_sent = next(s for s in appends if index in s.entries)
        notice = next(s for s in appends if s.commit_index >= index)
        # The commit left in an append of its own, before the idle period was over.
        assert not notice.entries and before_idle(entry_sent, notice), (address, appends)
