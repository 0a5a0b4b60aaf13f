"""Typed keys for what a node has in flight.

A key names one decision: the kind of proposal or action and what it is about (a node, a
guest, a domain, a DRBD resource, an incarnation, a heartbeat number). While a key is in
flight the decision is not repeated; once its outcome comes back (or is unknown) the next pass
looks again (DESIGN rule 7). `str(key)` is the spelling logs and simulator traces show
("stopped:web1", "assign"), unchanged from when keys were plain strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ProposalKind(StrEnum):
    """What a proposed command is for."""

    HEARTBEAT = "hb"  # subject: this agent's heartbeat number
    JOIN = "join"  # subject: this agent's incarnation
    LEAVE = "leave"  # subject: this agent's incarnation
    DEFINE = "define"  # subject: guest
    DECLARE_FAILED = "declare"  # subject: node
    FENCE_STARTED = "fence_started"  # subject: node
    FENCE_RESULT = "fence_result"  # subject: node
    ASSIGN = "assign"  # no subject: one placement in flight at a time
    GUEST_ERROR = "error"  # subject: guest
    GUEST_STARTING = "starting"  # subject: guest
    GUEST_RUNNING = "running"  # subject: guest
    GUEST_STOPPED = "stopped"  # subject: guest
    PEER_OUTDATED = "outdated"  # subject: guest (its DRBD peer)
    PEER_UP_TO_DATE = "uptodate"  # subject: guest (its DRBD peer)
    NETWORK_CONDITION = "network"  # no subject: this node's one condition
    MIGRATE = "migrate"  # subject: guest (the leader's evacuation intent)
    MIGRATION_DONE = "migrated"  # subject: guest
    MIGRATION_ABORTED = "migration_aborted"  # subject: guest
    MIGRATION_RESUMED = "migration_resumed"  # subject: guest
    LEG_STALE = "leg_stale"  # subject: guest/leg (a raid1 leg)
    LEG_FRESH = "leg_fresh"  # subject: guest/leg


class ActionKind(StrEnum):
    """What a local action does."""

    START = "start"  # subject: guest
    STOP = "stop"  # subject: guest
    DESTROY = "destroy"  # subject: domain
    PROMOTE = "promote"  # subject: DRBD resource
    DEMOTE = "demote"  # subject: DRBD resource
    RESUME_IO = "resume_io"  # subject: DRBD resource
    FENCE = "fence"  # subject: node (one fencing of a node at a time, whatever its epoch)
    MIGRATE = "migrate"  # subject: guest (the source's libvirt migration)
    RESUME = "resume"  # subject: guest (the destination resumes its migrated copy)
    ATTACH_LEG = "attach_leg"  # subject: guest/leg (a raid1 leg)
    DETACH_LEG = "detach_leg"  # subject: guest/leg


@dataclass(frozen=True)
class ProposalKey:
    kind: ProposalKind
    subject: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.subject}" if self.subject else str(self.kind)


@dataclass(frozen=True)
class ActionKey:
    kind: ActionKind
    subject: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.subject}"


ASSIGN_KEY = ProposalKey(ProposalKind.ASSIGN)
