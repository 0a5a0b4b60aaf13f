"""Fencing: attempts, back-off, fencing levels, and the watchdog level (DESIGN rule 4).

The leader fences a failed node in three committed steps: `FenceStarted` names the node that
runs the fence agents (and counts the attempt), that node runs `RunFence` (the shell walks the
configured levels; every device of a level must succeed), and the verdict is committed as
`FenceResult`. Recovery waits on a committed successful verdict only; a failed fence is retried
after a back-off that doubles from `fence_retry_initial_s` up to `fence_retry_max_s`, and never
falls through to recovery.

A node fenced by its watchdog is considered off once its lease, its watchdog timeout and a
margin have certainly passed since the leader last applied its heartbeat: it stopped renewing
by `lease_s` after that heartbeat, stopped petting then, and its watchdog resets it within
`watchdog_timeout_s`. The timeout is the one the node *committed* with its `Join` (what its
device reported after arming), not the leader's config.

A node whose power levels end with a watchdog level (`fence = [["ipmi-hv1"], "watchdog"]`: the
10th-floor case, where the BMC died with the host) is fenced by its power levels first; once at
least one complete pass through them has failed in this failure epoch, the same watchdog
deadline counts as a fence too (the power levels keep being retried meanwhile, and whichever
verdict commits first wins). If the node never committed a watchdog timeout, its watchdog level
is unusable: it waits for a power fence or for an admin's `confirm-fenced`.
"""

from __future__ import annotations

import math

from haagent.commands import FenceResult, FenceStarted
from haagent.core.decisions import ActionResult, Event, Proposal, RunFence, event
from haagent.core.failure_detection import FailureDetector
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import FenceMethod, NodeRecord
from haagent.ports import ConsensusView, FenceOutcome


class Fencing:
    def __init__(self, settings: AgentSettings, detector: FailureDetector) -> None:
        self._settings = settings
        self._detector = detector
        self._next_attempt_at: dict[str, float] = {}  # node -> end of its back-off
        self._failures: dict[str, int] = {}  # node -> failed attempts in a row
        self._released_noted: dict[str, int] = {}  # node -> failure epoch already noted
        # (node, failure epoch, attempt) this agent has already run: each committed
        # FenceStarted launches the fence agents once, however often it is read.
        self._launched: set[tuple[str, int, int]] = set()

    def advance(self, out: Outbox, node: str, view: ConsensusView) -> None:
        """Take the FAILED node `node` one step closer to a committed verdict (leader only)."""
        s = self._settings
        record = view.state.node(node)
        method = s.nodes[node].fence_method if node in s.nodes else None
        if method is None:
            return
        result_key = ProposalKey(ProposalKind.FENCE_RESULT, node)
        if record.watchdog_released and (
            method is FenceMethod.WATCHDOG or s.nodes[node].watchdog_level
        ):
            # Released by a disarm and not confirmed armed again since: nothing proves it can
            # reset the host, so its watchdog level waits (power levels still run; an admin
            # can confirm-fenced). Logged once per failure epoch.
            self._note_released(out, node, record.failure_epoch)
            if method is FenceMethod.WATCHDOG:
                return
        if method is FenceMethod.WATCHDOG:
            # Watchdog only. A node that joined before `Join` carried its timeout (a mixed-
            # version cluster) falls back to the configured one, as before.
            timeout_s = record.watchdog_timeout_s
            if timeout_s is None:
                timeout_s = s.nodes[node].watchdog_timeout_s
            self._watchdog_verdict(out, node, record, view, timeout_s)
            return
        if (
            s.nodes[node].watchdog_level
            and not record.watchdog_released
            and record.watchdog_timeout_s is not None
            and record.fence.attempts >= 1
            and record.fence.last_result == "failed"
            and result_key not in out.in_flight.proposals
            and self._watchdog_verdict(out, node, record, view, record.watchdog_timeout_s)
        ):
            return
        run = RunFence(node, record.failure_epoch)
        if run.key in out.in_flight.actions or result_key in out.in_flight.proposals:
            return
        attempt = (node, record.failure_epoch, record.fence.attempts)
        if record.fence.in_progress_by == s.node and attempt not in self._launched:
            self._launched.add(attempt)
            out.act(run)
            out.note("fence", node=node, epoch=record.failure_epoch, attempt=record.fence.attempts)
            return
        if out.now < self._next_attempt_at.get(node, -math.inf):
            return
        started = FenceStarted(node, record.failure_epoch, s.node, out.wall())
        out.propose(
            Proposal(ProposalKey(ProposalKind.FENCE_STARTED, node), started, s.commit_timeout_s)
        )

    def _note_released(self, out: Outbox, node: str, epoch: int) -> None:
        if self._released_noted.get(node) != epoch:
            self._released_noted[node] = epoch
            out.note("watchdog_untrusted", node=node, why="released by a disarm, not re-armed")

    def _watchdog_verdict(
        self, out: Outbox, node: str, record: NodeRecord, view: ConsensusView, timeout_s: float
    ) -> bool:
        """Propose a watchdog `FenceResult` once lease + `timeout_s` + margin has passed since
        this leader last applied `node`'s heartbeat (its own clock). True if it proposed."""
        s = self._settings
        since = self._detector.silence_start(node, record.heartbeat_seq, view, out.now)
        if out.now < since + s.lease_s + timeout_s + s.watchdog_margin_s:
            return False
        detail = (
            f"watchdog deadline passed ({out.now - since:.2f}s since last heartbeat; "
            f"lease {s.lease_s:g}s + watchdog {timeout_s:g}s + margin {s.watchdog_margin_s:g}s)"
        )
        verdict = FenceResult(
            node, record.failure_epoch, True, FenceMethod.WATCHDOG, detail, out.wall()
        )
        key = ProposalKey(ProposalKind.FENCE_RESULT, node)
        if out.propose(Proposal(key, verdict, s.commit_timeout_s)):
            out.note("fence_watchdog", node=node)
            return True
        return False

    def done(
        self, run: RunFence, result: ActionResult, now: float, wall: float
    ) -> tuple[list[Event], Proposal]:
        """Take the fence agents' verdict: back off after a failure, and return the
        `FenceResult` to commit on the next pass (`wall`: display time of `now`)."""
        s = self._settings
        outcome = result.fence or FenceOutcome(ok=False, detail=result.detail)
        if outcome.ok:
            self._failures.pop(run.node, None)
        else:
            failures = self._failures.get(run.node, 0) + 1
            self._failures[run.node] = failures
            delay = min(s.fence_retry_initial_s * 2 ** (failures - 1), s.fence_retry_max_s)
            self._next_attempt_at[run.node] = now + delay
        events = [event("fence_done", node=run.node, ok=outcome.ok, detail=outcome.detail)]
        verdict = FenceResult(
            node=run.node,
            epoch=run.epoch,
            ok=outcome.ok,
            method=FenceMethod.AGENT,
            detail=outcome.detail,
            at=wall,
        )
        key = ProposalKey(ProposalKind.FENCE_RESULT, run.node)
        return events, Proposal(key, verdict, s.commit_timeout_s)
