"""In-flight bookkeeping shared by every concern, and the outbox one pass writes into.

`InFlight` outlives passes: the proposals sent (by key, with the time each was sent, which is
what a committed heartbeat extends the lease from), the actions running (by key), and results
to propose on the next pass. A decision whose key is in flight is not taken again: its outcome,
even "unknown", comes back through `AgentCore.proposal_done` / `action_done` first.

`Outbox` lives for one pass: it collects the proposals, actions and events in the order the
concerns decide them (that order is what the shell, logs and simulator traces see).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from haagent.core.decisions import Action, Event, Proposal, event
from haagent.core.keys import ActionKey, ProposalKey, ProposalKind


@dataclass
class InFlight:
    proposals: dict[ProposalKey, float] = field(default_factory=dict)  # key -> sent at
    actions: dict[ActionKey, Action] = field(default_factory=dict)
    queued: list[Proposal] = field(default_factory=list)  # results to report next pass

    def proposing(self, kind: ProposalKind) -> bool:
        """Is any proposal of this kind in flight?"""
        return any(key.kind is kind for key in self.proposals)

    def keys(self) -> frozenset[ProposalKey | ActionKey]:
        return frozenset(self.proposals) | frozenset(self.actions)


class Outbox:
    """One pass's decisions, in order. `now` is the node's monotonic clock for this pass."""

    def __init__(self, now: float, wall_offset_s: float, in_flight: InFlight) -> None:
        self.now = now
        self._wall_offset_s = wall_offset_s
        self.in_flight = in_flight
        self.proposals: list[Proposal] = []
        self.actions: list[Action] = []
        self.events: list[Event] = []

    def propose(self, proposal: Proposal) -> bool:
        """Queue a proposal unless one with the same key is still in flight."""
        if proposal.key in self.in_flight.proposals:
            return False
        self.in_flight.proposals[proposal.key] = self.now
        self.proposals.append(proposal)
        return True

    def act(self, action: Action) -> bool:
        """Queue an action unless one with the same key is still running."""
        if action.key in self.in_flight.actions:
            return False
        self.in_flight.actions[action.key] = action
        self.actions.append(action)
        return True

    def note(self, name: str, **data: str | int | float | bool | None) -> None:
        self.events.append(event(name, **data))

    def wall(self) -> float:
        """Wall-clock time of this pass, for display timestamps in commands only."""
        return round(self.now + self._wall_offset_s, 3)
