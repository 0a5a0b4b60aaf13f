"""Failure detection: how long each peer has been silent, and `DeclareFailed` with evidence.

Silence is measured on this node's own monotonic clock from when it applied the peer's latest
heartbeat (never by comparing clocks across nodes, DESIGN rule 2). The declaration is
conditional on that heartbeat's sequence number, so a heartbeat that commits in the meantime
makes `apply` refuse it. Only the leader declares, and only while it holds a valid lease.

Silence counts only over time in which the declaring leader itself held its lease without a
gap (issue 8 item 9): while it could not commit, no peer could have broken the silence through
it, so that stretch proves nothing about the peer. A leader that has just (re)gained its lease
therefore waits a full failure timeout of fresh evidence before declaring anyone failed.
"""

from __future__ import annotations

from haagent.commands import DeclareFailed
from haagent.core.decisions import Proposal
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import FailureEvidence, NodeRecord
from haagent.ports import ConsensusView


class FailureDetector:
    def __init__(self, settings: AgentSettings) -> None:
        self._settings = settings
        # node -> (seq, when this core first saw that sequence without having applied it
        # itself). One entry per node: an older sequence is never asked for again once a newer
        # one is seen. Public so that a test can prove it stays bounded.
        self.first_seen: dict[str, tuple[int, float]] = {}

    def silence_start(self, node: str, seq: int, view: ConsensusView, now: float) -> float:
        """When this node last applied `node`'s heartbeat number `seq` (its own clock).

        If it never applied it itself (e.g. it learned the state from a snapshot), silence is
        counted from the moment it first saw that sequence: later than the truth, so safe.
        """
        seen = view.heartbeats.get(node)
        if seen is not None and seen.seq == seq:
            return seen.at
        known = self.first_seen.get(node)
        if known is not None and known[0] == seq:
            return known[1]
        self.first_seen[node] = (seq, now)
        return now

    def silent_s(self, node: str, record: NodeRecord, view: ConsensusView, now: float) -> float:
        return now - self.silence_start(node, record.heartbeat_seq, view, now)

    def check(
        self,
        out: Outbox,
        node: str,
        record: NodeRecord,
        view: ConsensusView,
        lease_held_since: float,
    ) -> None:
        """Declare the UP peer `node` failed once it has been silent past the failure timeout.

        `lease_held_since` is when this node's current unbroken lease began (its own clock,
        `Lease.held_continuously_since`): silence before it is not counted.
        """
        s = self._settings
        since = max(self.silence_start(node, record.heartbeat_seq, view, out.now), lease_held_since)
        silent_s = out.now - since
        if silent_s <= s.failure_timeout_s:
            return
        detail = (
            f"no heartbeat for {silent_s:.2f}s (> {s.failure_timeout_s}s) "
            f"after #{record.heartbeat_seq}"
        )
        evidence = FailureEvidence(
            declared_by=s.node,
            last_heartbeat_seq=record.heartbeat_seq,
            silent_s=round(silent_s, 3),
            detail=detail,
            declared_at=out.wall(),
        )
        declare = DeclareFailed(node, record.heartbeat_seq, evidence)
        key = ProposalKey(ProposalKind.DECLARE_FAILED, node)
        if out.propose(Proposal(key, declare, s.commit_timeout_s)):
            out.note("declare_failed", node=node, silent_s=round(silent_s, 3))
