"""Replication liveness on the real pysyncobj over TCP on loopback: a replica that missed
entries, or holds entries the cluster never committed, catches up within a bound
proportional to what it missed, and a lagging replica cannot depose a healthy leader.

Issue 8 item 8 saw a deposed, fenced and restarted leader follow the new leader at the same
term with its commit index stuck for over 70 s. Its journal ended with entries of its old
term that never committed (it had appended them as leader just before it was cut off). The
leader backed off one entry per refusal, and the refusals that every other append in flight
provoked ("I have nothing at that index, send from my end") pushed it straight back to the
replica's end: it bounced between the two for ever. `test_a_deposed_leader_with_uncommitted_
entries_catches_up` rebuilds that journal and fails on pysyncobj 0.3.17 as shipped.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from haagent.commands import Heartbeat, Join
from haagent.consensus import RaftConsensus
from haagent.model import NodeRole
from haagent.ports import OutcomeKind
from haagent.vendor.pysyncobj.journal import createJournal
from tests.unit.test_consensus import Trio, until

NO_OP = b"\x01"  # pysyncobj's _COMMAND_TYPE.NO_OP: harmless to apply, if it ever were


async def join_all(t: Trio, names: tuple[str, ...]) -> None:
    for n in names:
        outcome = await t.nodes[n].propose(Join(n, f"{n}-a", NodeRole.HYPERVISOR, True, 0.0), 5)
        assert outcome.kind is OutcomeKind.ACCEPTED, outcome


def append_uncommitted(journal_file: Path, count: int) -> tuple[int, int]:
    """Append `count` entries of the journal's own current term after its end, as a leader
    does for proposals just before it is cut off. Returns (first index, term)."""
    journal = createJournal(str(journal_file))
    try:
        last_idx, last_term = journal[-1][1], journal[-1][2]
        term = max(last_term, journal.getCurrentTerm())
        for i in range(count):
            journal.add(NO_OP, last_idx + 1 + i, term)
        return last_idx + 1, term
    finally:
        journal._destroy()


async def heartbeats(c: RaftConsensus, node: str, stop: asyncio.Event, period_s: float) -> None:
    """Keep the log growing like a live cluster does (every node commits heartbeats)."""
    while not stop.is_set():
        await c.propose(Heartbeat(node, f"{node}-a"), 2)
        await asyncio.sleep(period_s)


def commit_index(c: RaftConsensus) -> int:
    return c.view().commit_index


def slow_ticks(c: RaftConsensus, seconds: float) -> None:
    """Make every tick of the replica `seconds` late, as on a saturated CPU."""
    sync = c._sync
    assert sync is not None
    sync.addOnTickCallback(lambda: time.sleep(seconds))  # type: ignore[attr-defined]


def deafen(c: RaftConsensus, seconds: float) -> None:
    """Drop every append the replica receives for `seconds`, as a lossy link does, while its
    connections stay up: its election timer fires although the leader is healthy."""
    sync = c._sync
    assert sync is not None
    transport = sync._SyncObj__transport  # type: ignore[attr-defined]
    deliver = transport._onMessageReceivedCallback
    until_t = time.monotonic() + seconds

    def filtered(node: object, message: dict[str, object]) -> None:
        if time.monotonic() < until_t and message.get("type") == "append_entries":
            return
        deliver(node, message)

    transport.setOnMessageReceivedCallback(filtered)


async def test_a_deposed_leader_with_uncommitted_entries_catches_up(trio: Trio) -> None:
    for n in ("n1", "n2", "n3"):
        trio.start(n)
    await until("a leader", lambda: trio.leader() is not None)
    await join_all(trio, ("n1", "n2", "n3"))
    for _ in range(20):
        assert (await trio.nodes["n1"].propose(Heartbeat("n1", "n1-a"), 2)).accepted
    await until(
        "n3 caught up", lambda: commit_index(trio.nodes["n3"]) >= commit_index(trio.nodes["n1"])
    )
    await asyncio.sleep(1.2)  # pysyncobj persists its commit index once a second
    for n in ("n1", "n2", "n3"):
        trio.stop(n)
    # n3 was the leader of its term and appended entries nobody else received.
    first_divergent, old_term = append_uncommitted(trio.tmp_path / "n3" / "raft.journal", 8)

    # The majority elects a new leader at a higher term and moves on without n3.
    for n in ("n1", "n2"):
        trio.start(n)
    await until("a new leader", lambda: trio.leader() is not None)
    for _ in range(60):
        assert (await trio.nodes["n1"].propose(Heartbeat("n1", "n1-a"), 2)).accepted
    assert commit_index(trio.nodes["n1"]) > first_divergent + 50
    await asyncio.sleep(1.2)
    for n in ("n1", "n2"):
        trio.stop(n)

    # n3 is back (on a starved CPU: each of its ticks is late, so its answers to several
    # appends reach the leader together) and connected when the majority elects its next
    # leader, which starts sending at its own end: far beyond n3's.
    n3 = trio.start("n3")
    slow_ticks(n3, 0.03)
    for n in ("n1", "n2"):
        trio.start(n)
    await until("a new leader", lambda: trio.leader() is not None)
    leader = trio.leader()
    assert leader is not None and leader.view().term > old_term
    stop = asyncio.Event()
    load = [asyncio.create_task(heartbeats(trio.nodes[n], n, stop, 0.05)) for n in ("n1", "n2")]
    try:
        t0 = time.monotonic()
        target = commit_index(leader)
        # Bound: about 100 entries to fetch over loopback; generous for a loaded machine.
        try:
            await until("n3 to catch up", lambda: commit_index(n3) >= target, timeout_s=5.0)
        except AssertionError:
            st = leader._sync.getStatus()  # type: ignore[union-attr]
            own = n3._sync.getStatus()  # type: ignore[union-attr]
            nexts = {k: v for k, v in st.items() if k.startswith("next_node_idx_server")}
            raise AssertionError(
                f"n3 stuck: commit {own['commit_idx']}, log {own['log_len']}, "
                f"leader commit {st['commit_idx']}, leader's next indexes {nexts}"
            ) from None
        caught_up_s = time.monotonic() - t0
        # ...and it stays current while the log grows.
        await asyncio.sleep(1.0)
        assert commit_index(n3) >= target + 5
        print(f"\nn3 caught up to {target} in {caught_up_s:.2f}s")
    finally:
        stop.set()
        await asyncio.gather(*load)


async def test_a_lagging_follower_does_not_depose_the_leader(trio: Trio) -> None:
    """A follower that stops hearing the leader for longer than the election timeout (a
    lossy link; a starved CPU does the same) must not bump the term: the others heard from
    the leader within the election timeout and refuse its pre-vote. Without pre-vote every
    such stretch deposes the leader."""
    for n in ("n1", "n2", "n3"):
        trio.start(n)
    await until("a leader", lambda: trio.leader() is not None)
    await join_all(trio, ("n1", "n2", "n3"))
    leader = trio.leader()
    assert leader is not None
    term = leader.view().term
    follower = next(c for c in trio.nodes.values() if c is not leader)
    stop = asyncio.Event()
    load = asyncio.create_task(heartbeats(leader, leader.node, stop, 0.05))
    try:
        for _ in range(5):
            # Deaf for longer than the maximum election timeout: it will call an election.
            deafen(follower, 1.0)
            await asyncio.sleep(1.3)
        await until(
            "the follower to follow again",
            lambda: commit_index(follower) >= commit_index(leader) - 2,
        )
        assert leader.view().is_leader
        assert leader.view().term == term, "a lagging follower bumped the term"
        assert max(c.view().term for c in trio.nodes.values()) == term
    finally:
        stop.set()
        await load
