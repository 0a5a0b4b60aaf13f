"""Failure detection: how long each peer has been silent, and `DeclareFailed` with evidence.

Silence is measured on this node's own monotonic clock (never by comparing clocks across
nodes, DESIGN rule 2) from when it saw the peer's latest heartbeat (`HeartbeatSeen.at`: when it
appended it as leader, else when it applied it; either follows the send). The declaration is
conditional on that heartbeat's sequence number, so a heartbeat that commits in the meantime
makes `apply` refuse it. Only the leader declares, and only while it holds a valid lease.

Silence counts only over time in which the declaring leader itself held its lease without a
gap (issue 8 item 9): while it could not commit, no peer could have broken the silence through
it, so that stretch proves nothing about the peer. A leader that has just (re)gained its lease
therefore waits a full failure timeout of fresh evidence before declaring anyone failed.

Liveness means progress (issue 8 item 8): heartbeats and joins carry the sender's applied Raft
index. A heartbeat proves the sender current only as of when this node's own replica moved past
that index (`as_of`, from a short history of this node's progress) when that is more than
`lease_s` before the heartbeat was seen, so a node whose replica stopped advancing stays silent
however many heartbeats or joins it commits: it gets no assignment (scheduling asks
`silent_s`) and is declared failed. "Moved past", not "reached": while nothing new commits, a
replica at the latest index is as current as this one however long ago that index was
reached. (Measured from "reached", every node that joined at a real cold start looked behind:
the joins carry the index the cluster sat at while it elected a leader, which took longer than
a lease on 22 agents, so the leader placed the first guests on itself only.) Such a
declaration names the index (`behind_index`), so newer heartbeats that still report a replica
behind it do not refuse it. Fencing's watchdog arithmetic keeps the time the last heartbeat was
seen: the node's lease from it ended a lease after its send, which came before, so that is what
it needs.

A node that (re)joined as a new incarnation is behind by nature while it catches up (an empty
or old journal): its silence counts only from when this node first saw that incarnation, so it
gets a full failure timeout to catch up before a declaration, and none for the staleness of the
replica it started from. It still gets no assignment until it is current (`silent_s`).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping

from haagent.commands import DeclareFailed
from haagent.core.decisions import Proposal
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import Checkpoint, FailureEvidence, NodeRecord
from haagent.ports import ConsensusView


class FailureDetector:
    def __init__(self, settings: AgentSettings) -> None:
        self._settings = settings
        # node -> (seq, when this core first saw that sequence without having applied it
        # itself). One entry per node: an older sequence is never asked for again once a newer
        # one is seen. Public so that a test can prove it stays bounded.
        self.first_seen: dict[str, tuple[int, float]] = {}
        # This node's own progress: (applied index, when a pass first saw it), growing indexes.
        # Pruned to one entry at or before the horizon, so it stays small. Public for tests.
        self.progress: deque[tuple[int, float]] = deque()
        self._horizon_s = settings.failure_timeout_s + settings.lease_s
        # node -> (incarnation, when this core first saw it): one entry per node.
        self.incarnation_seen: dict[str, tuple[str, float]] = {}
        # node -> the last pass at which it was frozen or the cluster disarmed (one entry per
        # node): its silence counts only from then, so a thaw or a re-arm gives it a full
        # failure timeout before a declaration.
        self.held_at: dict[str, float] = {}

    def hold(self, node: str, now: float) -> None:
        """`node` may not be declared failed now (frozen, or the cluster disarmed)."""
        self.held_at[node] = now

    def observe_progress(self, index: int, now: float) -> None:
        """Record this replica's applied index at the start of a pass (every node, every
        pass: a follower that becomes leader needs the history it saw)."""
        if not self.progress or index > self.progress[-1][0]:
            self.progress.append((index, now))
        while len(self.progress) >= 2 and self.progress[1][1] <= now - self._horizon_s:
            self.progress.popleft()

    def as_of(self, index: int, now: float) -> float:
        """Until when, on this node's clock, a replica that applied `index` was as current as
        this node's own: until this replica moved past `index` (before that it held nothing
        the other lacked). The time is the first pass that saw an index above `index`, never
        earlier than the truth (a pass sees an index after it was reached), so it never makes
        a node look staler than it is; an index this node has not moved past yet counts as
        `now`."""
        i = bisect.bisect_right(self.progress, index, key=lambda entry: entry[0])
        if i == len(self.progress):
            return now
        return self.progress[i][1]

    def evidence_start(
        self, node: str, record: NodeRecord, view: ConsensusView, now: float
    ) -> float:
        """When `node` last proved itself live and current: when its latest heartbeat was seen,
        unless the index that heartbeat reported was reached here more than `lease_s` before
        (its replica is that far behind: the bound of "current"); then only as of that."""
        start = self.silence_start(node, record.heartbeat_seq, view, now)
        if record.applied_index is not None:
            current = self.as_of(record.applied_index, now)
            if start - current > self._settings.lease_s:
                return current
        return start

    def silence_start(self, node: str, seq: int, view: ConsensusView, now: float) -> float:
        """When this node saw `node`'s heartbeat number `seq` (its own clock, `HeartbeatSeen`).

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

    def observe_incarnations(self, nodes: Mapping[str, NodeRecord], now: float) -> None:
        """Note when each node's current incarnation was first seen (every pass, every node:
        O(nodes), so that a follower that becomes leader knows it from before)."""
        for node, record in nodes.items():
            self.incarnation_since(node, record, now)

    def incarnation_since(self, node: str, record: NodeRecord, now: float) -> float:
        """When this core first saw `node`'s current incarnation (its own clock)."""
        known = self.incarnation_seen.get(node)
        if known is not None and known[0] == record.incarnation:
            return known[1]
        self.incarnation_seen[node] = (record.incarnation, now)
        return now

    def silent_s(self, node: str, record: NodeRecord, view: ConsensusView, now: float) -> float:
        """How long `node` has given no proof of being live and current (placement skips a
        node silent for more than a lease)."""
        return now - self.evidence_start(node, record, view, now)

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
        heard = self.silence_start(node, record.heartbeat_seq, view, out.now)
        current = self.evidence_start(node, record, view, out.now)
        joined = max(self.incarnation_since(node, record, out.now), self.held_at.get(node, -1e18))
        silent_s = out.now - max(current, lease_held_since, joined)
        if silent_s <= s.failure_timeout_s:
            return
        behind_index: int | None = None
        if current < heard and out.now - max(heard, lease_held_since, joined) <= (
            s.failure_timeout_s
        ):
            # It still commits heartbeats, but its replica has not advanced: name the index so
            # that its newer (equally stuck) heartbeats do not refuse the declaration.
            assert record.applied_index is not None
            behind_index = record.applied_index + 1
            detail = (
                f"replica stuck at index {record.applied_index} for {silent_s:.2f}s "
                f"(> {s.failure_timeout_s}s) at #{record.heartbeat_seq}"
            )
        else:
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
        declare = DeclareFailed(node, record.heartbeat_seq, evidence, behind_index)
        key = ProposalKey(ProposalKind.DECLARE_FAILED, node)
        if out.propose(Proposal(key, declare, s.commit_timeout_s)):
            if behind_index is None:
                out.note("declare_failed", node=node, silent_s=round(silent_s, 3))
            else:
                out.note(
                    "declare_failed", node=node, silent_s=round(silent_s, 3), behind=behind_index
                )

    def declare_diverged(
        self, out: Outbox, node: str, record: NodeRecord, checkpoint: Checkpoint
    ) -> None:
        """Declare the UP peer `node` failed because the checkpoint it reports differs from
        the cluster's (`haagent.core.divergence`): its state cannot be trusted, so it must run
        nothing and be fenced. Accepted while it still reports that checkpoint."""
        s = self._settings
        detail = (
            f"state diverged: digest {checkpoint.digest} at checkpoint {checkpoint.index} "
            f"differs from the cluster's"
        )
        evidence = FailureEvidence(
            declared_by=s.node,
            last_heartbeat_seq=record.heartbeat_seq,
            silent_s=0.0,
            detail=detail,
            declared_at=out.wall(),
        )
        declare = DeclareFailed(node, record.heartbeat_seq, evidence, diverged=checkpoint)
        key = ProposalKey(ProposalKind.DECLARE_FAILED, node)
        if out.propose(Proposal(key, declare, s.commit_timeout_s)):
            out.note("declare_failed", node=node, diverged=checkpoint.index)
