"""Digests that let replicas find out that they disagree (issue 8 item 6).

Two things must be the same on every node, and neither is checked by Raft itself:

- the replicated state: every replica applies the same commands with the same `apply`, so the
  states must be equal. A snapshot that loaded wrongly, a bug or a damaged disk breaks that
  silently. Every `CHECKPOINT_EVERY` commands (`ClusterState.applied`, which every replica
  counts alike) a replica takes a digest of its state; heartbeats carry the latest one, and
  replicas compare digests at the same index only (`haagent.core.divergence`).
- the cluster-wide config (cluster name, nodes, fencing, guests, timing, limits): each node
  reads its own file. `Join` carries `config_digest` and the state machine refuses a node whose
  digest differs from the up nodes' (`haagent.statemachine`).

Cost (the lease loop is sacred, issue 7): the apply path only tests `applied % CHECKPOINT_EVERY`
and hands the (immutable) state to `haagent.checkpointer.Checkpointer`, whose thread computes
the digest; heartbeats carry a fixed-size checkpoint. Nothing on the heartbeat path is O(state).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Any

from haagent.codec import to_json
from haagent.core.settings import AgentSettings
from haagent.model import ClusterState

CHECKPOINT_EVERY = 256
"""Commands between two state checkpoints. At 22 nodes heartbeating every second (the robust
profile: 22 commands/s) that is one digest every ~12 s, and heartbeats report the newest
checkpoint most of the time; a quiet 3-node cluster takes ~85 s. The digest's cost is spread
over 256 applies (on the checkpointer's thread, see `haagent.checkpointer`)."""

KEEP_CHECKPOINTS = 8
"""Own checkpoints kept to compare with what others report (theirs may lag by a few)."""

_DIGEST_HEX = 16  # 64 bits: a collision by accident is not a concern, by design not a threat


def is_checkpoint(applied: int, every: int = CHECKPOINT_EVERY) -> bool:
    """Whether the state after `applied` commands is a checkpoint (the same on every replica)."""
    return applied > 0 and applied % every == 0


RecordDigests = dict[int, tuple[object, str]]
"""A memo of record digests: id(record) -> (the record, kept alive so the id stays its own,
its digest). States share every record a command did not change, so a caller that keeps this
between checkpoints re-digests only the records that changed."""


def state_digest(state: ClusterState, memo: RecordDigests | None = None) -> str:
    """A digest of the whole replicated state, the same on every replica that applied the same
    commands: per record, SHA-256 of its canonical JSON (sorted keys); then SHA-256 over the
    records' digests by name and the other fields. O(state) even with `memo` (never on the
    lease path: `haagent.checkpointer` runs it on its own thread); `memo` makes the JSON part
    O(changed records). The memo is pruned to the records of `state`."""
    doc: dict[str, Any] = {}
    seen: RecordDigests = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if isinstance(value, dict):
            doc[f.name] = {name: _record_digest(rec, memo, seen) for name, rec in value.items()}
        else:
            doc[f.name] = to_json(value)
    if memo is not None:
        memo.clear()
        memo.update(seen)
    return _digest(doc)


def _record_digest(record: object, memo: RecordDigests | None, seen: RecordDigests) -> str:
    key = id(record)
    known = memo.get(key) if memo is not None else None
    digest = known[1] if known is not None and known[0] is record else _digest(to_json(record))
    seen[key] = (record, digest)
    return digest


def config_digest(settings: AgentSettings) -> str:
    """A digest of the cluster-wide part of a node's settings: everything the core decides
    with except the node's own name (nodes and their fencing, guests, timing, limits). The
    value `Join` commits and `haagent_config_info{digest}` exports."""
    doc: dict[str, Any] = {}
    for f in fields(settings):
        if f.name == "node":
            continue
        value = getattr(settings, f.name)
        if f.name == "nodes":
            value = {name: to_json(ns) for name, ns in sorted(value.items())}
        elif f.name == "guests":
            value = sorted(value, key=lambda g: g.name)  # the order in the file is no setting
        doc[f.name] = to_json(value)
    return _digest(doc)


def _digest(doc: Any) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_HEX]
