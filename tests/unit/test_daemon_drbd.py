"""The daemon's DRBD wiring, on the production wrapper (`resources/drbd.sh`) with FAKE
drbd-utils on PATH (shell scripts named as fakes: the host kernel has no DRBD; what real DRBD
does is tested in tests/integration/test_real_drbd.py): the executor runs promote, demote
and resume-io through the wrapper, the observer adds the replicas to its view (and which are
not current), and `DrbdService` serves the fence socket and watches events2."""

from __future__ import annotations

import asyncio
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from haagent.agent import (
    AgentSettings,
    DemoteReplica,
    NodeSettings,
    PromoteReplica,
    ResumeReplicaIo,
)
from haagent.commands import GuestRunning
from haagent.config import Config
from haagent.core.lease import Lease
from haagent.daemon.authority import ActAuthority
from haagent.daemon.drbd import DrbdService
from haagent.daemon.executor import ActionExecutor
from haagent.daemon.observer import Observer
from haagent.daemon.offload import Offload
from haagent.daemon.telemetry import Telemetry
from haagent.model import ClusterState, GuestRecord, GuestSpec, NodeRole
from haagent.ports import ConsensusView, DiskState, Outcome, OutcomeKind, ReplicaRole
from haagent.resources.drbd import DrbdReplicas
from haagent.resources.drbd_fence import FenceRequest, Op, Verdict, ask
from tests.unit.test_replicas import build, starting_on

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "drbd"

# FAKE drbdadm: logs its arguments; exits 17 (what DRBD 8.4 answers a refused promotion,
# measured in the test guests) when FAKE_DRBDADM_EXIT says so.
FAKE_DRBDADM = """#!/bin/sh
echo "$*" >> "$FAKE_DRBD_LOG"
if [ -n "${FAKE_DRBDADM_EXIT:-}" ]; then
    echo "0: State change failed: (-2) Need access to UpToDate data" >&2
    exit "$FAKE_DRBDADM_EXIT"
fi
"""
# FAKE drbdsetup events2: replays a real captured 8.4 dump, then stays alive.
FAKE_DRBDSETUP = """#!/bin/sh
cat "$FAKE_EVENTS2_DUMP"
exec sleep 600
"""


@pytest.fixture
def fake_drbd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("drbdadm", FAKE_DRBDADM), ("drbdsetup", FAKE_DRBDSETUP)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(stat.S_IRWXU)
    log = tmp_path / "drbdadm.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DRBD_VERSION", "9")
    monkeypatch.setenv("FAKE_DRBD_LOG", str(log))
    monkeypatch.setenv("FAKE_EVENTS2_DUMP", str(FIXTURES / "84-status-primary-uptodate.txt"))
    return log


def executor(replicas: DrbdReplicas | None, leased: bool = True) -> ActionExecutor:
    settings = AgentSettings("c", "n1", {"n1": NodeSettings(NodeRole.HYPERVISOR, 1024)})
    # The committed state gives guest db to n1 at generation 3; the lease holds or has lapsed.
    lease = Lease(settings, "n1-inc", 0.0)
    lease.until, lease.held_since = (math.inf, 0.0) if leased else (-math.inf, math.inf)
    state = ClusterState().with_guest(GuestRecord(GuestSpec("db", "db", 64), "n1", 3))
    authority = ActAuthority("n1", lease, lambda: state)
    return ActionExecutor(
        cast(Config, None), settings, None, cast(object, None),  # type: ignore[arg-type]
        Telemetry("n1", Offload()), authority, replicas, 5.0,
    )  # fmt: skip


async def test_the_executor_runs_replica_actions_through_the_wrapper(
    fake_drbd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replicas = DrbdReplicas(["r0"], lambda: None, timeout_s=5.0)
    ex = executor(replicas)
    for action in (
        PromoteReplica("db", "r0", 3),
        DemoteReplica("r0", "guest not running here"),
        ResumeReplicaIo("db", "r0", 3),
    ):
        result = await ex.dispatch(action)
        assert result.ok, result
    assert fake_drbd.read_text().splitlines() == ["primary r0", "secondary r0", "resume-io r0"]
    # DRBD's refusal is a failure with its message, never a success.
    monkeypatch.setenv("FAKE_DRBDADM_EXIT", "17")
    result = await ex.dispatch(PromoteReplica("db", "r0", 3))
    assert not result.ok and "exit 17" in result.detail and "UpToDate" in result.detail
    # A node without DRBD resources fails them explicitly.
    result = await executor(None).dispatch(PromoteReplica("db", "r0", 3))
    assert not result.ok and "no DRBD resource" in result.detail
    # Checked at the moment of acting: without a lease, or for a generation that moved on,
    # the wrapper is not even called, and the refusal is not a failure of the node.
    monkeypatch.delenv("FAKE_DRBDADM_EXIT")
    calls = len(fake_drbd.read_text().splitlines())
    for ex_, generation in ((executor(replicas, leased=False), 3), (executor(replicas), 2)):
        result = await ex_.dispatch(PromoteReplica("db", "r0", generation))
        assert not result.ok and result.refused, result
    assert len(fake_drbd.read_text().splitlines()) == calls


class Source:
    def __init__(self) -> None:
        self.unknown = frozenset({"r0"})

    def snapshot(self) -> tuple[dict[str, object], frozenset[str]]:
        return {}, self.unknown


def test_the_observer_view_says_which_replicas_are_not_current() -> None:
    source = Source()
    obs = Observer(None, lambda: None, replicas=source)  # type: ignore[arg-type]
    assert obs.view().replicas_unknown == {"r0"} and obs.view().replicas == {}
    assert obs.view().domains == {}  # a node without a hypervisor: nothing runs


class NoMajority:
    """A consensus that commits nothing (named for what it is: a stand-in, no Raft)."""

    def view(self) -> ConsensusView:
        # Guest db on r0 (replicas on n1 and n2), running on n1.
        return ConsensusView(state=build(GuestRunning("db", "n1", 2, 0.0), state=starting_on("n1")))

    async def propose(self, command: object, timeout_s: float) -> Outcome:
        return Outcome(OutcomeKind.UNKNOWN, "no majority")


async def wait_for(cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_the_drbd_service_watches_and_serves_the_fence_socket(
    fake_drbd: Path, tmp_path: Path
) -> None:
    wakes = 0

    def wake() -> None:
        nonlocal wakes
        wakes += 1

    sock = tmp_path / "run" / "fence.sock"
    service = DrbdService("n1", ["r0"], sock, wake, command_timeout_s=5.0)
    try:
        await service.serve(NoMajority(), commit_timeout_s=0.5)  # type: ignore[arg-type]
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert service.replicas.snapshot() == ({}, frozenset({"r0"}))  # not started: unknown
        service.start()
        await wait_for(lambda: "r0" in service.replicas.snapshot()[0])
        current, unknown = service.replicas.snapshot()
        assert unknown == frozenset() and wakes >= 1
        obs = current["r0"]
        assert (obs.role, obs.disk, obs.connected, obs.suspended) == (
            ReplicaRole.PRIMARY,
            DiskState.UP_TO_DATE,
            True,
            False,
        )
        # The handler's request reaches the authority; no majority is never a success.
        request = FenceRequest(Op.FENCE_PEER, "r0", "n2")
        answer = await asyncio.to_thread(ask, str(sock), request, 10.0)
        assert answer.verdict is Verdict.NO_MAJORITY
    finally:
        await service.close()
    assert not sock.exists()
    assert service.replicas.snapshot()[1] == frozenset({"r0"})
