"""The leader's append traffic grows with nodes, not with nodes x proposals (vendored patch
`appendEntriesMinInterval`, haagent/vendor/pysyncobj/PATCHES.md).

Real pysyncobj over TCP on loopback. With batching off, pysyncobj as shipped sends every new
entry to every follower in a message of its own (and each commit advance in another): a burst
of proposals costs each follower one append per proposal. With the patch, proposals drained in
one tick leave in one message, and sends for new entries are spaced by the minimum interval.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from haagent.commands import Heartbeat
from haagent.consensus import RaftConsensus, append_min_interval
from tests.unit.test_consensus import Trio, until
from tests.unit.test_consensus_catchup import join_all

BURST = 60


def count_appends(c: RaftConsensus) -> Counter[str]:
    """Count the append_entries this replica sends, per destination (wraps its transport)."""
    sync = c._sync
    assert sync is not None
    transport = sync._SyncObj__transport  # type: ignore[attr-defined]
    send = transport.send
    sent: Counter[str] = Counter()

    def counting(node: object, message: dict[str, object]) -> bool:
        if message.get("type") == "append_entries":
            sent[str(node)] += 1
        return bool(send(node, message))

    transport.send = counting
    return sent


def test_the_interval_grows_with_the_cluster_and_stays_below_the_idle_period() -> None:
    assert append_min_interval(3, 1.0) == pytest.approx(0.015)
    assert append_min_interval(22, 1.0) == pytest.approx(0.1)
    assert append_min_interval(64, 1.0) == pytest.approx(0.1)
    # half of the 94 ms idle period
    assert append_min_interval(22, 0.3) == pytest.approx(0.3 / 3.2 / 2)


async def test_a_burst_of_proposals_reaches_a_follower_in_a_few_appends(trio: Trio) -> None:
    for n in ("n1", "n2", "n3"):
        trio.start(n)
    await until("a leader", lambda: trio.leader() is not None)
    await join_all(trio, ("n1", "n2", "n3"))
    leader = trio.leader()
    assert leader is not None
    sent = count_appends(leader)
    outcomes = await asyncio.gather(
        *(leader.propose(Heartbeat(leader.node, f"{leader.node}-a"), 10) for _ in range(BURST))
    )
    assert all(o.accepted for o in outcomes), outcomes
    followers = [n for n in trio.nodes if n != leader.node]
    await until(
        "the followers applied the burst",
        lambda: all(
            trio.nodes[n].view().commit_index >= leader.view().commit_index for n in followers
        ),
    )
    # As shipped: at least one append per proposal to each follower (BURST), plus the commit
    # notices. Coalesced: the burst leaves in a handful, plus idle appends (one per 60 ms).
    for address, count in sent.items():
        assert count < BURST / 3, (address, count, dict(sent))
