"""The pysyncobj adapter, for real: three replicas over TCP on loopback in this process."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from haagent.commands import Heartbeat, Join
from haagent.consensus import RaftConsensus, retransmit_gap
from haagent.localcluster.ports import free_port
from haagent.model import NodeRole, NodeState
from haagent.ports import OutcomeKind

SECRET = "test-secret-0123456789"


async def until(what: str, probe: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Trio:
    def __init__(self, tmp_path: Path, secrets: dict[str, str] | None = None) -> None:
        self.addresses = {n: f"127.0.0.1:{free_port()}" for n in ("n1", "n2", "n3")}
        self.tmp_path = tmp_path
        self.secrets = secrets or {}
        self.nodes: dict[str, RaftConsensus] = {}

    def start(self, name: str) -> RaftConsensus:
        c = RaftConsensus(
            name, self.addresses, self.secrets.get(name, SECRET), self.tmp_path / name
        )
        c.start()
        self.nodes[name] = c
        return c

    def stop(self, name: str) -> None:
        self.nodes.pop(name).stop()

    def stop_all(self) -> None:
        """Stop every replica still running (fixtures' teardown, also when a test failed)."""
        for name in list(self.nodes):
            self.stop(name)

    def leader(self) -> RaftConsensus | None:
        return next((c for c in self.nodes.values() if c.view().is_leader), None)


async def joined(t: Trio) -> None:
    for n in ("n1", "n2", "n3"):
        t.start(n)
    await until("a leader", lambda: t.leader() is not None)
    for n in ("n1", "n2", "n3"):
        outcome = await t.nodes[n].propose(Join(n, f"{n}-a", NodeRole.HYPERVISOR, True, 0.0), 5)
        assert outcome.kind is OutcomeKind.ACCEPTED, outcome


async def test_commands_replicate_and_heartbeats_are_timed_on_apply(trio: Trio) -> None:
    await joined(trio)
    before = time.monotonic()
    outcome = await trio.nodes["n2"].propose(Heartbeat("n2", "n2-a"), 2)
    assert outcome.accepted
    refused = await trio.nodes["n2"].propose(Heartbeat("n2", "stale"), 2)
    assert refused.kind is OutcomeKind.REFUSED and "stale incarnation" in refused.detail
    for c in trio.nodes.values():
        await until("apply everywhere", lambda c=c: c.view().state.node("n2").heartbeat_seq == 2)
        seen = c.view().heartbeats["n2"]
        assert seen.seq == 2 and seen.at >= before


async def test_the_journal_survives_a_restart(trio: Trio) -> None:
    await joined(trio)
    for _ in range(5):
        assert (await trio.nodes["n1"].propose(Heartbeat("n1", "n1-a"), 2)).accepted
    await asyncio.sleep(1.2)  # pysyncobj persists its commit index once a second
    for n in ("n1", "n2", "n3"):
        trio.stop(n)
    restarted = trio.start("n1")  # alone: no leader, it can only replay its own journal
    await until("journal replay", lambda: restarted.view().state.node("n1").heartbeat_seq == 6)
    assert restarted.view().state.node("n2").state is NodeState.UP


async def test_snapshots_are_our_json_and_restore_the_state(trio: Trio) -> None:
    await joined(trio)
    for _ in range(3):
        assert (await trio.nodes["n1"].propose(Heartbeat("n1", "n1-a"), 2)).accepted
    n1 = trio.nodes["n1"]
    assert n1._sync is not None
    n1._sync.forceLogCompaction()
    snapshot = trio.tmp_path / "n1" / "raft.snapshot.json"
    await until("a snapshot", snapshot.exists)
    doc = json.loads(snapshot.read_text())
    assert doc["format"] == 1
    assert doc["state"]["nodes"]["n1"]["heartbeat_seq"] == 4
    await asyncio.sleep(1.2)
    for n in ("n1", "n2", "n3"):
        trio.stop(n)
    restarted = trio.start("n1")
    await until("restore", lambda: restarted.view().state.node("n1").heartbeat_seq == 4)


async def test_a_peer_with_the_wrong_secret_is_refused(tmp_path: Path) -> None:
    t = Trio(tmp_path, secrets={"n3": "some-other-secret-xyz"})
    try:
        for n in ("n1", "n2", "n3"):
            t.start(n)
        await until("a leader among n1, n2", lambda: t.leader() is not None)
        leader = t.leader()
        assert leader is not None and leader.node != "n3"
        assert (
            await t.nodes["n1"].propose(Join("n1", "a", NodeRole.HYPERVISOR, True, 0.0), 3)
        ).accepted
        outsider = await t.nodes["n3"].propose(Join("n3", "a", NodeRole.HYPERVISOR, True, 0.0), 1.5)
        assert outsider.kind is OutcomeKind.UNKNOWN
        view = t.nodes["n3"].view()
        assert view.leader is None and view.state.node("n1").state is NodeState.DOWN
        assert t.nodes["n1"].view().state.node("n3").state is NodeState.DOWN
    finally:
        for n in list(t.nodes):
            t.stop(n)


async def test_no_quorum_means_unknown_within_the_timeout(trio: Trio) -> None:
    await joined(trio)
    trio.stop("n2")
    trio.stop("n3")
    started = time.monotonic()
    outcome = await trio.nodes["n1"].propose(Heartbeat("n1", "n1-a"), 0.5)
    assert outcome.kind is OutcomeKind.UNKNOWN
    assert time.monotonic() - started < 1.0


async def test_an_undecodable_committed_command_freezes_the_replica(trio: Trio) -> None:
    await joined(trio)
    leader = trio.leader()
    assert leader is not None and leader._sync is not None
    future_command = json.dumps({"v": 99, "type": "teleport"}).encode()
    leader._sync.submit(future_command)
    for c in trio.nodes.values():
        await until("incompatible", lambda c=c: c.view().incompatible is not None)
        assert "version 99" in (c.view().incompatible or "")
    # Nothing is applied after it: a frozen replica must not pretend to be current.
    outcome = await trio.nodes["n1"].propose(Heartbeat("n1", "n1-a"), 2)
    assert outcome.kind is OutcomeKind.UNKNOWN
    assert trio.nodes["n1"].view().state.node("n1").heartbeat_seq == 1


def _rto_ms_of_connections(ports: set[int]) -> list[float]:
    """The current RTO of every established TCP connection with an end on `ports` (ss -ti)."""
    out = subprocess.run(
        ["ss", "-tin", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    rtos: list[float] = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        ends = re.findall(r":(\d+)\s", line + " ")
        if not any(int(p) in ports for p in ends) or i + 1 >= len(lines):
            continue
        m = re.search(r"\brto:([\d.]+)", lines[i + 1])
        if m:
            rtos.append(float(m.group(1)))
    return rtos


async def test_raft_connections_retransmit_within_milliseconds(trio: Trio) -> None:
    """Every Raft connection, accepted ones included, uses quick retransmission: with Linux's
    200 ms minimum RTO, doubling per loss, three losses of one segment stall a heartbeat 1.4 s,
    longer than the balanced profile's lease allows (consensus.RAFT_RETRANSMIT)."""
    await joined(trio)
    ports = {int(a.rsplit(":", 1)[1]) for a in trio.addresses.values()}
    await until("the three Raft connections", lambda: len(_rto_ms_of_connections(ports)) >= 6)
    rtos = _rto_ms_of_connections(ports)
    if retransmit_gap() is None:
        assert max(rtos) < 100, rtos  # Linux's default minimum alone gives >= 200 ms
    else:
        assert min(rtos) >= 200, rtos  # the kernel lacks it: the README's route advice applies
