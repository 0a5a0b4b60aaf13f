"""The daemon's parts that need no running cluster: the executor's exhaustive dispatch, the
what-if time budget, loop statistics and the deadline bookkeeping of the observer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, Histogram

from haagent.agent import (
    Action,
    AgentSettings,
    DemoteReplica,
    NodeSettings,
    PromoteReplica,
    StartGuest,
)
from haagent.config import Config
from haagent.daemon.executor import ActionExecutor, UnknownActionError
from haagent.daemon.observer import Observer
from haagent.daemon.offload import Offload
from haagent.daemon.telemetry import LoopStats, Telemetry
from haagent.model import GuestSpec, NodeRole
from haagent.ports import DomainObservation, FenceOutcome, HypervisorError
from haagent.whatif import planned_state, tolerated_failures


@dataclass(frozen=True)
class Mystery:
    """An action type the core does not have (as if one were added without a handler)."""

    key: str = "mystery:x"


class NoFencer:
    async def fence(self, node: str, levels: Any, timeout_s: float) -> FenceOutcome:
        raise AssertionError("not called")


def executor() -> ActionExecutor:
    settings = AgentSettings("c", "n1", {"n1": NodeSettings(NodeRole.HYPERVISOR, 1024)})
    return ActionExecutor(
        cast(Config, None), settings, None, NoFencer(), Telemetry("n1", Offload())
    )


def test_an_action_without_a_handler_raises_in_the_pass_instead_of_succeeding() -> None:
    with pytest.raises(UnknownActionError, match="Mystery"):
        executor().dispatch(cast(Action, Mystery()))


def test_replica_actions_fail_explicitly_without_a_drbd_resource() -> None:
    ex = executor()
    for action in (PromoteReplica("g1", "r0", 3), DemoteReplica("r0", "not used")):
        result = asyncio.run(ex.dispatch(action))
        assert not result.ok and "DRBD" in result.detail


def test_a_start_without_a_hypervisor_is_a_failure_not_an_exception() -> None:
    result = asyncio.run(executor().dispatch(StartGuest("g1", "g1", 1)))
    assert not result.ok and "no hypervisor" in result.detail


def test_tolerated_failures_stops_at_its_budget_with_a_lower_bound() -> None:
    nodes = {f"h{i}": NodeRole.HYPERVISOR for i in range(8)}
    capacity = dict.fromkeys(nodes, 4096)
    guests = [GuestSpec(f"g{i}", f"g{i}", 512) for i in range(20)]
    state = planned_state(nodes, guests, capacity)
    full, _ = tolerated_failures(state, capacity)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    count, detail = tolerated_failures(state, capacity, (), stop)
    assert count < full and "at least" in detail and "budget" in detail
    assert tolerated_failures(state, capacity, (), lambda: False) == (full, _)


def test_loop_stats_keep_the_window_maximum_of_the_lag() -> None:
    stats = LoopStats(Histogram("h_seconds", "h", registry=CollectorRegistry()))
    stats.record(started_at=100.0, due_at=99.5, duration_s=0.001)  # 0.5 s late
    stats.record(started_at=101.0, due_at=100.9, duration_s=0.002)
    stats.record(started_at=102.0, due_at=102.5, duration_s=0.003)  # early: no lag
    assert stats.max_lag_s() == pytest.approx(0.5)
    assert stats.max_lag_s(since=100.5) == pytest.approx(0.1)
    stats.record(started_at=200.0, due_at=200.0, duration_s=0.001)  # the window moved on
    assert stats.max_lag_s() == pytest.approx(0.0)
    summary = stats.summary(200.0)
    assert summary["passes"] == 4 and summary["pass_max_s"] == pytest.approx(0.003)


class SlowHypervisor:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def domains(self) -> Mapping[str, DomainObservation]:
        self.calls += 1
        await self.release.wait()
        raise HypervisorError("gone")


def test_the_observer_never_makes_a_reader_wait_and_reports_failure_as_unknown() -> None:
    async def scenario() -> None:
        hv = SlowHypervisor()
        woken: list[int] = []
        obs = Observer(cast(Any, hv), lambda: woken.append(1), interval_s=10, timeout_s=10)
        obs.start()
        await asyncio.sleep(0.01)
        assert hv.calls == 1 and obs.view().domains is None and not woken  # hung, not waited
        hv.release.set()
        await asyncio.sleep(0.01)
        assert woken and obs.view().domains is None and obs.error == "gone"
        await obs.stop()

    asyncio.run(scenario())


def test_large_states_are_computed_in_a_worker_process() -> None:
    async def scenario() -> tuple[int, int]:
        offload = Offload(process_threshold=10)
        try:
            small = await offload.run(os.getpid, size=10)
            large = await offload.run(os.getpid, size=11)
        finally:
            offload.close()
        return small, large

    small, large = asyncio.run(scenario())
    assert small == os.getpid() != large
