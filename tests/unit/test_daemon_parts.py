"""The daemon's parts that need no running cluster: the executor's exhaustive dispatch, the
what-if time budget, loop statistics and the deadline bookkeeping of the observer."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
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
from haagent.commands import DefineGuest, Join
from haagent.config import Config
from haagent.core.lease import Lease
from haagent.daemon.admin import (
    TOLERANCE_MAX_AGE_S,
    AdminService,
    ToleranceSchedule,
    tolerance_basis,
)
from haagent.daemon.authority import ActAuthority
from haagent.daemon.executor import ActionExecutor, UnknownActionError
from haagent.daemon.observer import Observer
from haagent.daemon.offload import WORKER_NICE, Offload
from haagent.daemon.telemetry import LoopStats, Telemetry
from haagent.model import ClusterState, GuestRecord, GuestSpec, NodeRole
from haagent.ports import DomainObservation, FenceOutcome, HypervisorError
from haagent.statemachine import apply
from haagent.whatif import planned_state, tolerated_failures


@dataclass(frozen=True)
class Mystery:
    """An action type the core does not have (as if one were added without a handler)."""

    key: str = "mystery:x"


class NoFencer:
    async def fence(
        self, node: str, levels: Any, timeout_s: float, *, may_act: Any = None
    ) -> FenceOutcome:
        raise AssertionError("not called")


def executor() -> ActionExecutor:
    settings = AgentSettings("c", "n1", {"n1": NodeSettings(NodeRole.HYPERVISOR, 1024)})
    # A lease that holds and a state that gives g1 to n1 at generation 3: the authority
    # lets these actions through to the part under test.
    lease = Lease(settings, "n1-inc", 0.0)
    lease.until, lease.held_since = math.inf, 0.0
    state = ClusterState().with_guest(GuestRecord(GuestSpec("g1", "g1", 64), "n1", 3))
    authority = ActAuthority("n1", lease, lambda: state)
    return ActionExecutor(
        cast(Config, None), settings, None, NoFencer(), Telemetry("n1", Offload()), authority
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


async def until(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Wait for `condition` with a deadline (a loaded machine may take its time)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.005)


def test_the_observer_never_makes_a_reader_wait_and_reports_failure_as_unknown() -> None:
    async def scenario() -> None:
        hv = SlowHypervisor()
        woken: list[int] = []
        obs = Observer(cast(Any, hv), lambda: woken.append(1), interval_s=10, timeout_s=10)
        obs.start()
        await until(lambda: hv.calls == 1)
        assert obs.view().domains is None and not woken  # hung, not waited
        hv.release.set()
        await until(lambda: bool(woken))
        assert obs.view().domains is None and obs.error == "gone"
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


def _scheduling() -> tuple[int, int]:
    return os.sched_getscheduler(0), os.nice(0)


def test_the_worker_process_runs_below_the_agent() -> None:
    """The worker runs every agent's tolerated-failures count at the same moment (when the
    cluster settles); at the agents' priority 22 of them took the cores from the agents' Raft
    threads and leases lapsed. It runs niced; the agent itself keeps its priority."""

    async def scenario() -> tuple[tuple[int, int], tuple[int, int]]:
        offload = Offload(process_threshold=10)
        try:
            return (
                await offload.run(_scheduling, size=11),
                await offload.run(_scheduling, size=10),
            )
        finally:
            offload.close()

    (_, worker_nice), in_agent = asyncio.run(scenario())
    assert worker_nice == max(WORKER_NICE, os.nice(0))
    assert in_agent == _scheduling()


# --- the tolerated-failures count waits for a settled state (issue 7, cold start at scale) ----


def _cluster(guests: int) -> ClusterState:
    """Three hypervisors up and `guests` wanted guests: a new guests mapping per call."""
    state = ClusterState()
    for n in ("n1", "n2", "n3"):
        state, _ = apply(state, Join(n, f"{n}-inc", NodeRole.HYPERVISOR, True, 0.0))
    for i in range(guests):
        state, _ = apply(state, DefineGuest(GuestSpec(f"g{i}", f"g{i}", 64), 0.0))
    return state


def test_the_tolerated_count_waits_while_the_state_changes_and_follows_once_it_settled() -> None:
    """During a start every agent computed the count on every interval, since every start
    changed the guests, each count up to its 2 s budget in CPU and stale when done (12 agents
    / 500 guests on one host: 16 CPU-s in worker processes before all held a lease, 10 now).
    Now a changing state is only looked at; the count follows once the state stayed the same
    for a whole interval."""
    nodes = {n: NodeSettings(NodeRole.HYPERVISOR, 1024) for n in ("n1", "n2", "n3")}
    config = cast(Config, SimpleNamespace(nodes=nodes))
    telemetry = Telemetry("n1", Offload())
    admin = AdminService(config, AgentSettings("c", "n1", nodes), telemetry, lambda: None, bool)

    async def scenario() -> None:
        for k in range(1, 6):  # five looks, a guest started (a new state) before each
            await admin.refresh_tolerance(_cluster(k), k)
            assert telemetry.tolerance is None, f"computed on a changing state at look {k}"
        settled = _cluster(5)
        await admin.refresh_tolerance(settled, 6)  # changed since the last look: wait
        assert telemetry.tolerance is None
        await admin.refresh_tolerance(settled, 6)  # the same for a whole interval: count
        first = telemetry.tolerance
        assert first is not None and first.commit_index == 6
        await admin.refresh_tolerance(settled, 7)  # nothing changed: confirmed, not recounted
        assert telemetry.tolerance is not None and telemetry.tolerance.took_s == first.took_s
        assert telemetry.tolerance.commit_index == 6

    try:
        asyncio.run(scenario())
    finally:
        telemetry.close()


def test_a_state_that_keeps_changing_is_counted_at_the_max_age() -> None:
    schedule = ToleranceSchedule(started_at=0.0)
    looks = [(t, tolerance_basis(_cluster(int(t)))) for t in range(5, 70, 5)]
    computed = [t for t, basis in looks if schedule.decide(basis, float(t)) == "compute"]
    assert computed == [TOLERANCE_MAX_AGE_S, 2 * TOLERANCE_MAX_AGE_S]
    basis = tolerance_basis(_cluster(99))
    assert schedule.decide(basis, 70.0) == "wait"
    assert schedule.decide(basis, 75.0) == "compute"
    schedule.failed()  # the computation did not finish: decided afresh, not confirmed
    assert schedule.decide(basis, 80.0) == "compute"
    assert schedule.decide(basis, 85.0) == "confirm"
