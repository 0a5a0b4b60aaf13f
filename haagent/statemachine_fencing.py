"""`apply` for fencing: the start of an attempt, its verdict, and an admin's confirmation.

Pure and deterministic like `haagent.statemachine` (which dispatches here). Each handler
returns the new state and a refusal ("" when accepted) or a note for an accepted command, as
the admin and migration handlers do (`haagent.statemachine_admin.Handled`).

A fence is conditional on the failure epoch (every declaration bumps it) and on its attempt
number within that failure (issue 8, two fences in flight after a leader change): a start is
refused while another attempt has no verdict, a verdict counts only for the attempt in flight,
and a node with an attempt in flight does not rejoin (`haagent.statemachine._join`), so a fence
never switches off a node that came back. Commands written before the attempt field
(`attempt=None`) are applied as they were. Why: README, "Safety model", rules 4 and 7.
"""

from __future__ import annotations

from dataclasses import replace

from haagent.commands import WATCHDOG_VERDICT, ConfirmFenced, FenceResult, FenceStarted
from haagent.model import ClusterState, FenceMethod, NodeRecord, NodeState
from haagent.statemachine_admin import Handled

FENCE_PENDING = "a fence is in progress"
"""How the refusal of a join from a node whose fence has not returned its verdict begins."""


def fence_check(rec: NodeRecord, epoch: int) -> str:
    if rec.state is not NodeState.FAILED:
        return f"{rec.name} is {rec.state}, not failed"
    if rec.failure_epoch != epoch:
        return f"{rec.name} failed again since (failure {rec.failure_epoch}, not {epoch})"
    return ""


def fence_started(state: ClusterState, c: FenceStarted) -> Handled:
    rec = state.node(c.node)
    why = fence_check(rec, c.epoch)
    if why:
        return state, why, ""
    if c.attempt is not None:
        # Two fences of one node in flight let the later one switch it off after the earlier
        # one's verdict let it rejoin (issue 8): one at a time, each with its own number.
        if c.attempt != rec.fence.attempts + 1:
            stale = f"attempt {c.attempt} of failure {c.epoch}, {rec.fence.attempts} started"
            return state, f"stale start: {stale}", ""
        if rec.fence.in_progress_by is not None:
            pending = f"attempt {rec.fence.attempts} by {rec.fence.in_progress_by}"
            return state, f"{FENCE_PENDING}: {pending} has no verdict yet", ""
    fence = replace(rec.fence, attempts=rec.fence.attempts + 1, in_progress_by=c.leader)
    return state.with_node(replace(rec, fence=fence)), "", ""


def attempt_check(rec: NodeRecord, c: FenceResult) -> str:
    """Why the verdict `c` of a power attempt does not apply to `rec` ("" if it does): only
    the attempt in flight in the same failure epoch gets a verdict, and only once."""
    if rec.failure_epoch != c.epoch or rec.state not in (NodeState.FAILED, NodeState.FENCED):
        return fence_check(rec, c.epoch)
    if rec.fence.in_progress_by is None or c.attempt != rec.fence.attempts:
        pending = (
            f"attempt {rec.fence.attempts} by {rec.fence.in_progress_by} is in flight"
            if rec.fence.in_progress_by is not None
            else "no attempt is in flight"
        )
        return f"stale verdict of attempt {c.attempt} of failure {c.epoch}: {pending}"
    return ""


def fence_result(state: ClusterState, c: FenceResult) -> Handled:
    rec = state.node(c.node)
    if c.attempt is not None and c.attempt != WATCHDOG_VERDICT:
        why = attempt_check(rec, c)
        if why:
            return state, why, ""
        if rec.state is NodeState.FENCED:
            # Fenced meanwhile by another proof: this verdict only ends the attempt (the node
            # may rejoin once nothing can switch it off any more).
            fence = replace(rec.fence, in_progress_by=None)
            note = f"late verdict of attempt {c.attempt}: {'ok' if c.ok else 'failed'}"
            return state.with_node(replace(rec, fence=fence)), "", note
    else:
        why = fence_check(rec, c.epoch)
        if why:
            return state, why, ""
    # A watchdog verdict is about no attempt: one in flight may still switch the node off, so
    # it stays in flight (and the node does not rejoin) until its own verdict.
    in_progress_by = rec.fence.in_progress_by if c.attempt == WATCHDOG_VERDICT else None
    if c.ok:
        fence = replace(
            rec.fence,
            in_progress_by=in_progress_by,
            last_result="ok",
            last_detail=c.detail,
            method=c.method,
            confirmed_at=c.at,
        )
        new = replace(
            rec, state=NodeState.FENCED, fence=fence, reason=f"fenced: {c.detail}", changed_at=c.at
        )
    else:
        fence = replace(
            rec.fence,
            in_progress_by=in_progress_by,
            last_result="failed",
            last_detail=c.detail,
            method=c.method,
        )
        new = replace(rec, fence=fence)
    return state.with_node(new), "", ""


def confirm_fenced(state: ClusterState, c: ConfirmFenced) -> Handled:
    """An admin's word replaces a fence agent's: only for a node the cluster declared failed
    (so it is already silent and refused as a peer), in the failure the admin looked at."""
    rec = state.node(c.node)
    why = fence_check(rec, c.epoch)
    if why:
        return state, why, ""
    detail = f"power-off confirmed by {c.by}"
    # A power attempt in flight stays in flight: it may still switch the node off, so the node
    # rejoins only after its verdict (or after the leader gave it up).
    fence = replace(
        rec.fence,
        last_result="ok",
        last_detail=detail,
        method=FenceMethod.MANUAL,
        confirmed_at=c.at,
    )
    new = replace(
        rec, state=NodeState.FENCED, fence=fence, reason=f"fenced: {detail}", changed_at=c.at
    )
    return state.with_node(new), "", ""
