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

Attempts have identities (issue 8: two fences in flight after a leader change). Each committed
`FenceStarted` numbers its attempt within the failure epoch, and `apply` accepts a start only
while no other attempt is in flight and a verdict only for the attempt in flight, so a verdict
is never counted for another attempt, and the node does not rejoin while a fence of it may
still switch it off. Who launches: only the leader that proposed the start, and only within
`commit_timeout_s` of proposing it (the executor checks again right before each fence agent
call); an attempt committed later than that is given up at once, unrun. A new leader that finds
another fencer's attempt in flight does not start a second one: it waits for that verdict
until the fencer can no longer act (`may_act_s` after it first saw the attempt: the fencer
launches within `commit_timeout_s` of proposing, which is before anyone applies the start, and
its fence agents stop by `fence_timeout_s` plus the executor's grace), then commits a failed
verdict for it (`ATTEMPT_ABANDONED`) and starts its own. A dead fencer thus delays recovery
by at most `may_act_s`, never forever.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from haagent.commands import ATTEMPT_ABANDONED, WATCHDOG_VERDICT, FenceResult, FenceStarted
from haagent.core.decisions import ActionResult, Event, Proposal, RunFence, event
from haagent.core.failure_detection import FailureDetector
from haagent.core.inflight import Outbox
from haagent.core.keys import ActionKey, ActionKind, ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import FenceMethod, NodeRecord, NodeState
from haagent.ports import ConsensusView, FenceOutcome

FENCER_GRACE_S = 10.0
"""How long past `fence_timeout_s` the executor lets a fencer run before it gives up on it
(the fencer bounds itself: only a bug there needs this)."""


def may_act_s(settings: AgentSettings) -> float:
    """How long after a node first saw an attempt in flight its fence agents may still switch
    the target off (see the module doc)."""
    return settings.commit_timeout_s + settings.fence_timeout_s + FENCER_GRACE_S


@dataclass(frozen=True)
class SeenAttempt:
    """An attempt in flight as this core first saw it, and when (its own clock)."""

    epoch: int
    attempt: int
    at: float


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
        # node -> (failure epoch, attempt, when proposed): the last start this core proposed.
        self._proposed: dict[str, tuple[int, int, float]] = {}
        # node -> the attempt in flight against it as this core first saw it: one entry per
        # node with an attempt in flight. Public so that a test can see it stays bounded.
        self.in_flight_seen: dict[str, SeenAttempt] = {}

    def observe_attempts(self, nodes: Mapping[str, NodeRecord], now: float) -> None:
        """Note when each attempt in flight was first seen (every pass, every node: a
        follower that becomes leader then knows how long it has been in flight)."""
        for node, record in nodes.items():
            if record.fence.in_progress_by is None:
                self.in_flight_seen.pop(node, None)
            else:
                self._seen(node, record, now)

    def _seen(self, node: str, record: NodeRecord, now: float) -> SeenAttempt:
        known = self.in_flight_seen.get(node)
        if known is not None and (known.epoch, known.attempt) == (
            record.failure_epoch,
            record.fence.attempts,
        ):
            return known
        seen = SeenAttempt(record.failure_epoch, record.fence.attempts, now)
        self.in_flight_seen[node] = seen
        return seen

    def advance(self, out: Outbox, node: str, view: ConsensusView) -> None:
        """Take the FAILED node `node` one step closer to a committed verdict, or end the
        attempt still in flight against the FENCED node `node` (leader only)."""
        s = self._settings
        record = view.state.node(node)
        method = s.nodes[node].fence_method if node in s.nodes else None
        if method is None:
            return
        if record.state is NodeState.FENCED:
            if record.fence.in_progress_by is not None:
                self._settle(out, node, record, view.state.nodes)
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
        if record.fence.in_progress_by is not None:
            self._settle(out, node, record, view.state.nodes)
            return
        if result_key in out.in_flight.proposals or (
            ActionKey(ActionKind.FENCE, node) in out.in_flight.actions
        ):
            return  # a verdict on its way, or this core's fence agents still running
        if out.now < self._next_attempt_at.get(node, -math.inf):
            return
        attempt = record.fence.attempts + 1
        started = FenceStarted(node, record.failure_epoch, s.node, out.wall(), attempt)
        key = ProposalKey(ProposalKind.FENCE_STARTED, node)
        if out.propose(Proposal(key, started, s.commit_timeout_s)):
            self._proposed[node] = (record.failure_epoch, attempt, out.now)

    def _settle(
        self, out: Outbox, node: str, record: NodeRecord, nodes: Mapping[str, NodeRecord]
    ) -> None:
        """The attempt in flight against `node`: run it if this core just proposed it, else
        wait for its verdict, and give it up once its fencer can no longer act."""
        s = self._settings
        epoch, attempt = record.failure_epoch, record.fence.attempts
        run = RunFence(node, epoch, attempt)
        if _pending_here(out, node, record):
            return  # the fence runs here, or a verdict is on its way
        ident = (node, epoch, attempt)
        proposed = self._proposed.get(node)
        mine = (
            record.fence.in_progress_by == s.node
            and proposed is not None
            and proposed[:2] == (epoch, attempt)
            and ident not in self._launched
        )
        if mine and record.state is NodeState.FAILED:
            assert proposed is not None
            late_s = out.now - proposed[2]
            if late_s <= s.commit_timeout_s:
                self._launched.add(ident)
                out.act(run)
                out.note("fence", node=node, epoch=epoch, attempt=attempt)
                return
            # Its start committed after this core stopped waiting for it: a new leader may
            # have counted it as never launched, so it is not launched now; nothing ran.
            self._give_up(out, node, record, f"not run: its start committed {late_s:.2f}s late")
            return
        if ident in self._launched:
            # This core ran it, its fence agents have returned, and no verdict is on its way
            # (the proposal's outcome was lost): nothing of it can act any more.
            self._give_up(out, node, record, "its fence agents returned, the verdict was lost")
            return
        self._abandon_if_dead(out, node, record, nodes)

    def abandon_dead_attempts(self, out: Outbox, nodes: Mapping[str, NodeRecord]) -> None:
        """Leader without a lease: give up every attempt in flight whose fencer can no longer
        act, and nothing else. A failed verdict moves no guest, so it needs no lease; without
        it, a failed node that leads Raft (its rejoin waits for the verdict on a fence against
        it, so it never gets a lease) would keep the verdict from ever coming (swarm seed
        6554)."""
        for node, record in sorted(nodes.items()):
            if record.fence.in_progress_by is None or _pending_here(out, node, record):
                continue
            self._abandon_if_dead(out, node, record, nodes)

    def _abandon_if_dead(
        self, out: Outbox, node: str, record: NodeRecord, nodes: Mapping[str, NodeRecord]
    ) -> None:
        """Give up the attempt in flight against `node` once its fencer can no longer act."""
        s = self._settings
        seen = self._seen(node, record, out.now)
        by = record.fence.in_progress_by or ""
        fencer = nodes.get(by)
        if fencer is not None and fencer.state is NodeState.FENCED:
            # Its host was switched off after it was declared failed, which is after its lease
            # ended, so after it launched anything: the power-off ended its fence agents.
            self._give_up(out, node, record, f"{by} was fenced since")
        elif out.now - seen.at >= may_act_s(s):
            self._give_up(
                out,
                node,
                record,
                f"no verdict from {by} within {may_act_s(s):g}s, its fence agents have stopped",
            )

    def _give_up(self, out: Outbox, node: str, record: NodeRecord, why: str) -> None:
        """Commit a failed verdict for the attempt in flight against `node`, which can no
        longer switch it off: the next attempt (or the node's rejoin) may follow."""
        attempt = record.fence.attempts
        detail = f"{ATTEMPT_ABANDONED}: attempt {attempt} by {record.fence.in_progress_by}: {why}"
        verdict = FenceResult(
            node, record.failure_epoch, False, FenceMethod.AGENT, detail, out.wall(), attempt
        )
        key = ProposalKey(ProposalKind.FENCE_RESULT, node)
        if out.propose(Proposal(key, verdict, self._settings.commit_timeout_s)):
            out.note("fence_given_up", node=node, epoch=record.failure_epoch, attempt=attempt)

    def _note_released(self, out: Outbox, node: str, epoch: int) -> None:
        if self._released_noted.get(node) != epoch:
            self._released_noted[node] = epoch
            out.note("watchdog_untrusted", node=node, why="released by a disarm, not re-armed")

    def _watchdog_verdict(
        self, out: Outbox, node: str, record: NodeRecord, view: ConsensusView, timeout_s: float
    ) -> bool:
        """Propose a watchdog `FenceResult` once lease + `timeout_s` + margin has passed since
        this leader last saw `node`'s heartbeat (its own clock, `HeartbeatSeen`). True if it
        proposed."""
        s = self._settings
        since = self._detector.silence_start(node, record.heartbeat_seq, view, out.now)
        if out.now < since + s.lease_s + timeout_s + s.watchdog_margin_s:
            return False
        detail = (
            f"watchdog deadline passed ({out.now - since:.2f}s since last heartbeat; "
            f"lease {s.lease_s:g}s + watchdog {timeout_s:g}s + margin {s.watchdog_margin_s:g}s)"
        )
        verdict = FenceResult(
            node,
            record.failure_epoch,
            True,
            FenceMethod.WATCHDOG,
            detail,
            out.wall(),
            WATCHDOG_VERDICT,
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
            attempt=run.attempt,
        )
        key = ProposalKey(ProposalKind.FENCE_RESULT, run.node)
        return events, Proposal(key, verdict, s.commit_timeout_s)


def _pending_here(out: Outbox, node: str, record: NodeRecord) -> bool:
    """Whether the attempt in flight against `node` runs on this core, or its verdict is on
    its way from here: then nothing else may settle it."""
    run = RunFence(node, record.failure_epoch, record.fence.attempts)
    result_key = ProposalKey(ProposalKind.FENCE_RESULT, node)
    return run.key in out.in_flight.actions or result_key in out.in_flight.proposals
