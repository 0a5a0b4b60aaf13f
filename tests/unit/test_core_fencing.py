"""Fencing (haagent.core.fencing), DESIGN rule 4: fence before recover; attempts, back-off
and the watchdog level."""

from __future__ import annotations

from haagent.agent import (
    ActionResult,
    NodeSettings,
    ProposalKey,
    ProposalKind,
    RunFence,
)
from haagent.commands import (
    AssignGuests,
    Assignment,
    FenceResult,
    FenceStarted,
    GuestRunning,
    GuestStarting,
)
from haagent.model import (
    FenceMethod,
    NodeRole,
)
from haagent.ports import (
    FenceOutcome,
)
from tests.helpers.core_views import (
    ACCEPTED,
    NODES,
    build,
    commands,
    core,
    failed_n2,
    joined,
    local,
    of,
    view,
    with_lease,
)


# --- rule 4: fence before recover ------------------------------------------------------------
def test_fencing_commits_its_start_runs_the_agent_and_commits_the_result() -> None:
    c = core()
    state = failed_n2(
        build(
            AssignGuests((Assignment("g", "n2", 0),), "placed", 0.0),
            GuestStarting("g", "n2", 1, 0.0),
            GuestRunning("g", "n2", 2, 0.0),
            state=joined("n1", "n2", "n3"),
        )
    )
    with_lease(c, state, 10.0)
    seen = {"n3": 10.0}
    step = c.tick(10.01, view(state, leader=True, seen=seen), local(10.01))
    assert not of(RunFence, step.actions)  # not before its start is committed
    (started,) = [x for x in commands(step) if isinstance(x, FenceStarted)]
    assert not [x for x in commands(step) if isinstance(x, AssignGuests)]  # guest stays put
    c.proposal_done(ProposalKey(ProposalKind.FENCE_STARTED, "n2"), ACCEPTED, 10.02)
    state = build(started, state=state)

    step = c.tick(10.03, view(state, leader=True, seen=seen), local(10.03))
    (fence,) = of(RunFence, step.actions)
    assert not [x for x in commands(step) if isinstance(x, AssignGuests)]

    c.action_done(
        fence.key,
        ActionResult(
            False,
            "bmc timeout",  # type: ignore[attr-defined]
            FenceOutcome(False, "bmc timeout"),
        ),
        10.5,
    )
    step = c.tick(10.51, view(state, leader=True, seen=seen), local(10.51))
    (result,) = [x for x in commands(step) if isinstance(x, FenceResult)]
    assert not result.ok
    c.proposal_done(ProposalKey(ProposalKind.FENCE_RESULT, "n2"), ACCEPTED, 10.52)
    state = build(result, state=state)
    # Backed off: no new attempt at once, and still no recovery.
    step = c.tick(10.6, view(state, leader=True, seen=seen), local(10.6))
    assert not commands(step) or all(
        not isinstance(x, FenceStarted | AssignGuests) for x in commands(step)
    )
    retry_at = 10.5 + c.settings.fence_retry_initial_s + 0.01
    with_lease(c, state, retry_at - 0.1)
    step = c.tick(
        retry_at,
        view(state, leader=True, seen=seen),
        local(11.6),
    )
    assert [x for x in commands(step) if isinstance(x, FenceStarted)]


def test_recovery_follows_a_committed_fence() -> None:
    c = core()
    state = failed_n2(
        build(
            AssignGuests((Assignment("g", "n2", 0),), "placed", 0.0),
            GuestStarting("g", "n2", 1, 0.0),
            GuestRunning("g", "n2", 2, 0.0),
            state=joined("n1", "n2", "n3"),
        )
    )
    epoch = state.node("n2").failure_epoch
    state = build(
        FenceStarted("n2", epoch, "n1", 0.0),
        FenceResult("n2", epoch, True, FenceMethod.AGENT, "off", 0.0),
        state=state,
    )
    with_lease(c, state, 10.0)
    step = c.tick(10.01, view(state, leader=True, seen={"n3": 10.0}), local(10.01))
    (assign,) = [x for x in commands(step) if isinstance(x, AssignGuests)]
    (item,) = assign.assignments
    assert item.guest == "g" and item.node in ("n1", "n3") and item.expected_generation == 2


def test_watchdog_fencing_waits_for_lease_plus_timeout_plus_margin() -> None:
    nodes = dict(NODES)
    nodes["n2"] = NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.WATCHDOG, 5.0)
    c = core(nodes=nodes)
    state = failed_n2(joined("n1", "n2", "n3"))
    s = c.settings
    last_seen = 10.0
    deadline = last_seen + s.lease_s + 5.0 + s.watchdog_margin_s
    with_lease(c, state, deadline - 0.5)
    seen = {"n2": last_seen, "n3": deadline - 0.5}
    step = c.tick(deadline - 0.01, view(state, leader=True, seen=seen), local(19.0))
    assert not [x for x in commands(step) if isinstance(x, FenceResult)]
    assert not of(RunFence, step.actions)
    step = c.tick(deadline + 0.01, view(state, leader=True, seen=seen), local(deadline))
    (result,) = [x for x in commands(step) if isinstance(x, FenceResult)]
    assert result.ok and result.method is FenceMethod.WATCHDOG
