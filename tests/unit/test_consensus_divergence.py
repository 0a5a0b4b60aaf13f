"""Divergence on the real pysyncobj adapter (three replicas over TCP on loopback): a snapshot
that fails to load freezes the replica (vendored patch, PATCHES.md), checkpoints agree across
replicas, and `leave` takes a replica out of Raft without blocking."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from haagent.commands import Heartbeat
from haagent.consensus import RaftConsensus
from haagent.ports import OutcomeKind
from tests.unit.test_consensus import SECRET, Trio, joined, until

EVERY = 8


class CheckpointingTrio(Trio):
    def start(self, name: str) -> RaftConsensus:
        c = RaftConsensus(
            name, self.addresses, SECRET, self.tmp_path / name, checkpoint_every=EVERY
        )
        c.start()
        self.nodes[name] = c
        return c


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[CheckpointingTrio]:
    t = CheckpointingTrio(tmp_path)
    try:
        yield t
    finally:
        t.stop_all()


async def heartbeats(t: Trio, node: str, count: int) -> None:
    for _ in range(count):
        outcome = await t.nodes[node].propose(Heartbeat(node, f"{node}-a"), 2)
        assert outcome.accepted, outcome


async def test_replicas_agree_on_their_checkpoints(trio: CheckpointingTrio) -> None:
    await joined(trio)
    await heartbeats(trio, "n1", 2 * EVERY)
    for c in trio.nodes.values():
        await until("two checkpoints", lambda c=c: 2 * EVERY in c.view().checkpoints)
    digests = {n: c.view().checkpoints for n, c in trio.nodes.items()}
    assert digests["n1"] == digests["n2"] == digests["n3"], digests
    assert trio.nodes["n1"].view().checkpoint is not None


async def test_a_snapshot_that_fails_to_load_freezes_the_replica(
    trio: CheckpointingTrio,
) -> None:
    await joined(trio)
    await heartbeats(trio, "n1", 3)
    n1 = trio.nodes["n1"]
    assert n1._sync is not None
    n1._sync.forceLogCompaction()
    snapshot = trio.tmp_path / "n1" / "raft.snapshot.json"
    await until("a snapshot", snapshot.exists)
    await asyncio.sleep(1.2)  # pysyncobj persists its commit index once a second
    for n in ("n1", "n2", "n3"):
        trio.stop(n)
    doc = json.loads(snapshot.read_text())
    doc["state"]["nodes"]["n1"]["heartbeat_seq"] = "damaged"  # valid JSON, wrong type
    snapshot.write_text(json.dumps(doc))

    for n in ("n1", "n2", "n3"):
        trio.start(n)
    n1 = trio.nodes["n1"]
    await until("n1 incompatible", lambda: n1.view().incompatible is not None)
    assert "heartbeat_seq" in (n1.view().incompatible or "")
    assert n1._sync is not None and n1._sync.dumpLoadError is not None
    applied = n1._sync.raftLastApplied
    # The others go on committing; the frozen replica applies none of it (upstream went on
    # applying the journal on top of whatever state it had).
    await until("a leader", lambda: trio.leader() is not None)
    await heartbeats(trio, "n2", 5)
    await until("n3 applied", lambda: trio.nodes["n3"].view().state.node("n2").heartbeat_seq >= 6)
    assert n1._sync.raftLastApplied == applied
    assert n1.view().state.node("n2").heartbeat_seq == 0


async def test_leave_takes_the_replica_out_of_raft(trio: CheckpointingTrio) -> None:
    await joined(trio)
    leader = trio.leader()
    assert leader is not None
    leader.leave("state diverged (test)")
    assert not leader.running
    assert leader.view().incompatible == "state diverged (test)"
    assert not leader.view().is_leader
    others = [c for c in trio.nodes.values() if c is not leader]
    await until("a new leader", lambda: any(c.view().is_leader for c in others))
    outcome = await leader.propose(Heartbeat(leader.node, f"{leader.node}-a"), 1)
    assert outcome.kind is OutcomeKind.UNKNOWN
    # The two others still commit without it.
    survivor = others[0]
    outcome = await survivor.propose(Heartbeat(survivor.node, f"{survivor.node}-a"), 3)
    assert outcome.accepted
