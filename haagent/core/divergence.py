"""Divergence: replicas whose state differs from the cluster's, found by their checkpoints.

Every replica digests its state every `CHECKPOINT_EVERY` commands (`haagent.core.digests`) and its
heartbeats report the latest digest, which the state machine keeps in the node's record. At a
given index, the cluster's digest is the one a majority of the configured nodes reports (a
node's own digest counts for it). A replica that holds another digest at that index diverged:

- a node that finds itself diverged stops taking part (`AgentCore.tick` reports it as
  `Step.diverged`: no join, no heartbeat, no lease, nothing runs, and the shell stops its Raft
  replica so that it neither leads nor votes); its silence gets it declared failed and fenced;
- the leader declares a diverged peer failed at once (`DeclareFailed.diverged`), which the state
  machine accepts for as long as the peer still reports that checkpoint.

Without a majority at an index nobody is judged: two replicas that disagree cannot tell which
one is wrong. Digests are compared only at the same index; a checkpoint nobody else reached yet
proves nothing. Cost: O(nodes) per pass, never O(state).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from haagent.model import Checkpoint, ClusterState, NodeState


@dataclass(frozen=True)
class Verdicts:
    """`own`: why this replica diverged (None: it agrees, or nobody can tell yet);
    `peers`: the up peers whose latest reported checkpoint differs from the cluster's."""

    own: str | None
    peers: Mapping[str, Checkpoint]


NO_VERDICTS = Verdicts(None, {})


def judge(state: ClusterState, me: str, voters: int, own: Mapping[int, str]) -> Verdicts:
    """Compare checkpoints. `own` is this replica's recent checkpoints (index -> digest),
    `voters` the number of configured nodes (the majority is taken over all of them)."""
    reports: dict[str, Checkpoint] = {}
    tally: dict[int, Counter[str]] = {}
    for name, record in state.nodes.items():
        cp = record.checkpoint
        if name == me or cp is None or record.state is not NodeState.UP:
            continue
        reports[name] = cp
        tally.setdefault(cp.index, Counter())[cp.digest] += 1
    if not reports:
        return NO_VERDICTS
    for index, counts in tally.items():
        mine = own.get(index)
        if mine is not None:
            counts[mine] += 1
    majority: dict[int, str] = {}
    for index, counts in tally.items():
        digest, count = counts.most_common(1)[0]
        if 2 * count > voters:
            majority[index] = digest
    own_verdict = None
    for index in sorted(majority):
        mine = own.get(index)
        if mine is not None and mine != majority[index]:
            own_verdict = (
                f"state diverged: digest {mine} at checkpoint {index}, "
                f"the cluster's is {majority[index]}"
            )
            break
    peers = {
        name: cp
        for name, cp in sorted(reports.items())
        if cp.index in majority and majority[cp.index] != cp.digest
    }
    return Verdicts(own_verdict, peers)
