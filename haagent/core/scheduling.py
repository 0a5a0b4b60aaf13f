"""Scheduling, the leader's duty: spec sync, placement, give-up and error, cold start.

A pure function of the committed state, this node's settings and its measure of each peer's
silence; `haagent.placement.plan` does the packing. What it proposes is conditional on each
guest's generation (`AssignGuests` carries the expected one), so a placement decided on a view
that moved on is refused by `apply`, never applied twice.
"""

from __future__ import annotations

from collections.abc import Mapping

from haagent.commands import AssignGuests, Assignment, DefineGuest, GuestError
from haagent.core.decisions import Proposal
from haagent.core.failure_detection import FailureDetector
from haagent.core.inflight import Outbox
from haagent.core.keys import ASSIGN_KEY, ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import ClusterState, DesiredState, GuestRecord, GuestState, NodeRole, NodeState
from haagent.placement import Unplaced, plan
from haagent.ports import ConsensusView
from haagent.statemachine import spec_change_blocked

MAX_ASSIGNMENTS_PER_COMMAND = 256
"""At most this many guests are assigned by one `AssignGuests` (the rest by later passes), so
that it stays below the largest command the agent proposes (consensus.MAX_COMMAND_BYTES, 60
KiB): 256 assignments with 63-character names encode to 47 KB. Placement already places at
most max_concurrent_starts per node per pass (4 x 64 nodes = 256 by default)."""


class Scheduler:
    def __init__(
        self, settings: AgentSettings, started_at: float, detector: FailureDetector
    ) -> None:
        self._settings = settings
        self._started_at = started_at
        self._detector = detector
        # Guest records already compared with the config (records are immutable, so the same
        # object needs no second look).
        self._spec_checked: dict[str, GuestRecord] = {}
        # (guests map, node states) of the last plan that had nothing to do.
        self._idle_plan: tuple[Mapping[str, GuestRecord], tuple[object, ...]] | None = None
        self._unplaced: dict[str, str] = {}  # guest -> why, as last reported

    def sync_specs(self, out: Outbox, state: ClusterState) -> None:
        """(Re)define every configured guest that is missing from the state or differs."""
        s = self._settings
        for spec in s.guests:
            current = state.guests.get(spec.name)
            if current is not None and self._spec_checked.get(spec.name) is current:
                continue
            if current is not None and current.spec == spec:
                self._spec_checked[spec.name] = current
                continue
            if current is not None and spec_change_blocked(current, spec):
                # Re-checked when the record changes (e.g. the guest stops), not every pass.
                self._spec_checked[spec.name] = current
                out.note(
                    "spec_change_waits", guest=spec.name, why=spec_change_blocked(current, spec)
                )
                continue
            version = current.spec_version if current is not None else 0
            define = DefineGuest(spec, out.wall(), expect_version=version)
            key = ProposalKey(ProposalKind.DEFINE, spec.name)
            out.propose(Proposal(key, define, s.commit_timeout_s))

    def place(self, out: Outbox, view: ConsensusView, leaving: bool) -> None:
        """Assign every guest that needs an owner (one `AssignGuests` in flight at a time),
        and put in error those that cannot go anywhere. `leaving`: this node takes none."""
        s = self._settings
        state = view.state
        now = out.now
        cold = self._cold_start(now, state)
        # Placement depends only on the guests and on the nodes' states, not on heartbeats:
        # skip re-planning while neither changed since a plan that had nothing to do (on a
        # 10 000-guest cluster a plan costs ~15 ms, and the loop runs every 50 ms).
        # A node silent for longer than a lease cannot start anything now (it is about to lose
        # its lease, or already has): do not hand it guests until it is heard from again.
        silent = frozenset(
            n
            for n, r in state.nodes.items()
            if n != s.node
            and r.state is NodeState.UP
            and self._detector.silent_s(n, r, view, now) > s.lease_s
        )
        nodes_basis = (
            tuple(
                (n, r.state, r.role, r.maintenance, r.missing_networks)
                for n, r in sorted(state.nodes.items())
            ),
            silent,
        )
        last = self._idle_plan
        if not cold and last is not None and last[0] is state.guests and last[1] == nodes_basis:
            return
        exclude = silent | {s.node} if leaving else silent
        result = plan(state, s.capacity_mib, s.max_concurrent_starts, exclude)
        errors = self._give_up_on(out, state, result.unplaced)
        placements = tuple(p for p in result.placements if p.guest not in errors)
        idle = not result.placements and not errors and not leaving
        self._idle_plan = (state.guests, nodes_basis) if idle else None
        if cold:
            # At cold start, guests that never had an owner wait a moment for every hypervisor
            # to join, or the first node up would take them all regardless of preferences.
            placements = tuple(p for p in placements if p.expected_generation > 0)
        placements = placements[:MAX_ASSIGNMENTS_PER_COMMAND]  # the rest on later passes
        if placements and ASSIGN_KEY not in out.in_flight.proposals:
            assignments = tuple(
                Assignment(p.guest, p.node, p.expected_generation) for p in placements
            )
            assign = AssignGuests(assignments, "placed", out.wall())
            out.propose(Proposal(ASSIGN_KEY, assign, s.commit_timeout_s))
            for p in placements:
                out.note("assign", guest=p.guest, node=p.node, generation=p.expected_generation + 1)
        unplaced = {u.guest: u.why for u in result.unplaced}
        for guest, why in sorted(unplaced.items()):
            if self._unplaced.get(guest) != why:
                out.note("unplaced", guest=guest, why=why)
        self._unplaced = unplaced

    def _give_up_on(
        self, out: Outbox, state: ClusterState, unplaced: tuple[Unplaced, ...]
    ) -> set[str]:
        """A guest that failed on more than `max_relocations` + 1 nodes, or on every node it
        may run on, goes to the error state: an admin has to look (and disable/enable it).
        Returns the guests put in error, which are not placed."""
        s = self._settings
        # A guest that a node gave up on and that cannot go anywhere else now is not left
        # stopped without a word: the error state alerts (waiting for a start slot is fine).
        hopeless = {
            u.guest
            for u in unplaced
            if u.hopeless or (state.guests[u.guest].failed_nodes and not u.waiting)
        }
        errors: set[str] = set()
        for guest in state.guests.values():
            too_many = len(guest.failed_nodes) > s.max_relocations
            if not (guest.name in hopeless or too_many) or guest.state is not GuestState.STOPPED:
                continue
            if guest.desired is not DesiredState.RUNNING:
                continue
            errors.add(guest.name)
            reason = f"error: failed on {', '.join(guest.failed_nodes)}"
            error = GuestError(guest.name, guest.generation, reason, out.wall())
            key = ProposalKey(ProposalKind.GUEST_ERROR, guest.name)
            if out.propose(Proposal(key, error, s.commit_timeout_s)):
                out.note("guest_error", guest=guest.name, reason=reason)
        return errors

    def _cold_start(self, now: float, state: ClusterState) -> bool:
        """Within `initial_placement_wait_s` of this agent's start, while a configured
        hypervisor has not joined yet."""
        if now >= self._started_at + self._settings.initial_placement_wait_s:
            return False
        return any(
            ns.role is NodeRole.HYPERVISOR and state.node(name).state is not NodeState.UP
            for name, ns in self._settings.nodes.items()
        )
