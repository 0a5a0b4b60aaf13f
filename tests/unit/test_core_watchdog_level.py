"""The watchdog level (issue 8 item 1, the 10th-floor test): `fence = [["bmc"], "watchdog"]`.

When a host dies together with its BMC no power fence can ever succeed. Once a complete pass
through the power levels has failed, the watchdog deadline (lease + the timeout the node
*committed* when it joined + margin, since the leader last applied its heartbeat) counts as a
fence. Without a committed timeout the level is unusable and the node waits (DESIGN rule 4).
"""

from __future__ import annotations

import json

from haagent.agent import AgentCore, NodeSettings, ProposalKey, ProposalKind, RunFence, Step
from haagent.commands import (
    AssignGuests,
    Assignment,
    DefineGuest,
    FenceResult,
    FenceStarted,
    GuestRunning,
    GuestStarting,
    Join,
    decode,
    encode,
)
from haagent.model import ClusterState, FenceMethod, NodeRole
from tests.helpers.core_views import (
    ACCEPTED,
    NODES,
    SPEC,
    build,
    commands,
    core,
    failed_n2,
    local,
    of,
    view,
    with_lease,
)

CONFIGURED_S = 2.0  # what the fencing leader's own config says about n2's watchdog
ARMED_S = 5.0  # what n2's device reported after arming, committed with its Join
LAST_SEEN = 10.0  # when the leader last applied a heartbeat of n2 (its clock)


def level_core(level: bool = True) -> AgentCore:
    nodes = dict(NODES)
    nodes["n2"] = NodeSettings(
        NodeRole.HYPERVISOR, 1024, FenceMethod.AGENT, CONFIGURED_S, watchdog_level=level
    )
    return core(nodes=nodes)


def n2_failed(armed_s: float | None, attempts: tuple[bool, ...] = (False,)) -> ClusterState:
    """n2 owned and ran g, joined having armed `armed_s`, was declared failed, and the power
    fence attempts in `attempts` (ok or not) were committed."""
    state = failed_n2(
        build(
            *(
                Join(n, f"{n}-inc", NodeRole.HYPERVISOR, True, 0.0, watchdog_timeout_s=armed_s)
                for n in ("n1", "n2", "n3")
            ),
            DefineGuest(SPEC, 0.0),
            AssignGuests((Assignment("g", "n2", 0),), "placed", 0.0),
            GuestStarting("g", "n2", 1, 0.0),
            GuestRunning("g", "n2", 2, 0.0),
        )
    )
    epoch = state.node("n2").failure_epoch
    for ok in attempts:
        state = build(
            FenceStarted("n2", epoch, "n1", 0.0),
            FenceResult("n2", epoch, ok, FenceMethod.AGENT, "Connection timed out", 0.0),
            state=state,
        )
    return state


def tick(c: AgentCore, state: ClusterState, now: float) -> Step:
    seen = {"n2": LAST_SEEN, "n3": now - 0.01}
    return c.tick(now, view(state, leader=True, seen=seen), local(now))


def watchdog_verdicts(step: Step) -> list[FenceResult]:
    return [
        x
        for x in commands(step)
        if isinstance(x, FenceResult) and x.ok and x.method is FenceMethod.WATCHDOG
    ]


def deadline(c: AgentCore, timeout_s: float) -> float:
    s = c.settings
    return LAST_SEEN + s.lease_s + timeout_s + s.watchdog_margin_s


def test_after_a_failed_power_pass_the_committed_watchdog_deadline_is_a_fence() -> None:
    c = level_core()
    state = n2_failed(ARMED_S)
    at = deadline(c, ARMED_S)
    with_lease(c, state, at - 0.5)
    # Past the deadline of the leader's configured timeout, but not of the armed one.
    step = tick(c, state, deadline(c, CONFIGURED_S) + 0.5)
    assert not watchdog_verdicts(step)
    assert not of(AssignGuests, commands(step))
    step = tick(c, state, at - 0.01)
    assert not watchdog_verdicts(step)
    step = tick(c, state, at + 0.01)
    (verdict,) = watchdog_verdicts(step)
    assert verdict.node == "n2" and verdict.epoch == state.node("n2").failure_epoch
    assert f"watchdog {ARMED_S:g}s" in verdict.detail
    # The verdict commits: the guest moves.
    c.proposal_done(ProposalKey(ProposalKind.FENCE_RESULT, "n2"), ACCEPTED, at + 0.02)
    state = build(verdict, state=state)
    step = tick(c, state, at + 0.03)
    (assign,) = of(AssignGuests, commands(step))
    assert assign.assignments[0].node in ("n1", "n3")


def test_no_watchdog_verdict_before_a_power_pass_has_failed() -> None:
    c = level_core()
    state = n2_failed(ARMED_S, attempts=())
    at = deadline(c, ARMED_S)
    with_lease(c, state, at + 1.0)
    step = tick(c, state, at + 1.0)
    assert not watchdog_verdicts(step)
    # It fences with its power levels first.
    assert [x for x in commands(step) if isinstance(x, FenceStarted)]


def test_an_unknown_watchdog_timeout_makes_the_level_unusable() -> None:
    c = level_core()
    state = n2_failed(None, attempts=(False, False))
    with_lease(c, state, 100.0)
    step = tick(c, state, 100.0)
    assert not watchdog_verdicts(step)
    assert not of(AssignGuests, commands(step))


def test_without_a_watchdog_level_failed_power_fences_never_recover() -> None:
    c = level_core(level=False)
    state = n2_failed(ARMED_S, attempts=(False, False))
    with_lease(c, state, 100.0)
    step = tick(c, state, 100.0)
    assert not watchdog_verdicts(step)
    assert not of(AssignGuests, commands(step))


def test_the_watchdog_verdict_does_not_wait_for_a_hung_power_fence() -> None:
    """A BMC that no longer answers hangs `fence_ipmilan` up to `fence_timeout_s`: the
    watchdog verdict must not queue behind that attempt."""
    c = level_core()
    state = n2_failed(ARMED_S)
    at = deadline(c, ARMED_S)
    with_lease(c, state, at - 1.0)
    # This leader starts attempt 2 itself (only the proposer of a start runs it).
    (started,) = [x for x in commands(tick(c, state, at - 1.0)) if isinstance(x, FenceStarted)]
    assert started.attempt == 2
    c.proposal_done(ProposalKey(ProposalKind.FENCE_STARTED, "n2"), ACCEPTED, at - 0.95)
    state = build(started, state=state)
    step = tick(c, state, at - 0.9)
    assert of(RunFence, step.actions)  # attempt 2 runs now, and may hang
    with_lease(c, state, at)
    step = tick(c, state, at + 0.01)
    assert watchdog_verdicts(step)


def test_watchdog_only_fencing_waits_on_the_committed_timeout() -> None:
    nodes = dict(NODES)
    nodes["n2"] = NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.WATCHDOG, CONFIGURED_S)
    c = core(nodes=nodes)
    state = n2_failed(ARMED_S, attempts=())
    with_lease(c, state, deadline(c, ARMED_S) - 0.5)
    assert not watchdog_verdicts(tick(c, state, deadline(c, CONFIGURED_S) + 0.5))
    assert watchdog_verdicts(tick(c, state, deadline(c, ARMED_S) + 0.01))


def test_join_commits_the_armed_timeout_and_old_joins_decode_as_unknown() -> None:
    c = core()
    c.set_watchdog_timeout(ARMED_S)
    step = c.tick(0.0, view(ClusterState()), local(0.0))
    (join,) = [x for x in commands(step) if isinstance(x, Join)]
    assert join.watchdog_timeout_s == ARMED_S
    state = build(join)
    assert state.node("n1").watchdog_timeout_s == ARMED_S
    # A join written by an agent before the field existed.
    old = json.loads(encode(join))
    del old["watchdog_timeout_s"]
    decoded = decode(json.dumps(old).encode())
    assert isinstance(decoded, Join) and decoded.watchdog_timeout_s is None
    assert build(decoded).node("n1").watchdog_timeout_s is None
