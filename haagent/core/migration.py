"""Live migration with a committed hand-over (README, "Live migration").

The protocol, one guest at a time (g: the guest's committed generation at the intent):

1. intent     `MigrateGuest` (an admin, or the leader evacuating a node in maintenance)
              commits a pending `Migration(source, dest, generation=g+1)`. Nothing else
              changes: the source still owns the guest at g.
2. migrate    the source, holding a valid lease and still owner at g (checked again right
              before the libvirt call, like a start), runs `LiveMigrate`: libvirt copies the
              guest to the destination and leaves it PAUSED there with metadata at g+1.
              The destination recognises that paused domain as the migration's incoming
              copy (`incoming`), never as a foreign instance and never as its own guest.
3. hand-over  libvirt reports completion: the source proposes `MigrationDone`; applying it
              makes the destination the owner at g+1.
4. resume     only then does the destination resume its copy (`ResumeGuest`), and reports it
              with `MigrationResumed`.

Every failure path before step 3 ends in `MigrationAborted` (by the source) or in the guest
being assigned elsewhere (its source fenced): both move the guest past g+1 or away from the
destination, so the paused copy there is no longer recognised and is destroyed, never resumed.
So a destination copy runs (unpaused) only after the hand-over committed, and the source's
copy is off by then (libvirt's completion) and destroyed by its own agent if it were not (it
no longer owns the guest). The paused copy of a source that died mid-way is destroyed rather
than resumed after the fence: its memory may be incomplete, and the guest then restarts cold
from the shared disks like after any crash.

Pure: this node's clock is passed in, nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from haagent.commands import MigrateGuest, MigrationAborted, MigrationDone, MigrationResumed
from haagent.core.decisions import (
    ActionResult,
    Event,
    LiveMigrate,
    LocalView,
    Proposal,
    ResumeGuest,
    event,
)
from haagent.core.inflight import Outbox
from haagent.core.keys import ProposalKey, ProposalKind
from haagent.core.settings import AgentSettings
from haagent.model import (
    ClusterState,
    DesiredState,
    GuestRecord,
    GuestState,
    MigrationPhase,
    NodeState,
)
from haagent.placement import plan
from haagent.ports import DomainObservation
from haagent.statemachine_migration import migration_refusal


class Migrations:
    """This node's part in live migrations: as source, as destination, and as leader."""

    def __init__(self, settings: AgentSettings) -> None:
        self._s = settings
        # guest -> (generation migrated at, ok, detail): what the libvirt call answered, until
        # the hand-over or the abort it calls for commits.
        self._results: dict[str, tuple[int, bool, str]] = {}
        # (guests map, nodes) of the last evacuation plan that proposed nothing.
        self._idle: tuple[object, object] | None = None

    # -- destination ------------------------------------------------------------------------

    def incoming(self, guest: GuestRecord | None, obs: DomainObservation) -> bool:
        """Is `obs` the incoming copy of a migration pending towards this node? It is left
        alone (paused, never resumed) until the hand-over or the abort commits."""
        m = guest.migration if guest is not None else None
        return (
            m is not None
            and m.phase is MigrationPhase.PENDING
            and m.dest == self._s.node
            and obs.generation == m.generation
        )

    def resume(self, out: Outbox, guest: GuestRecord, seen: DomainObservation, drain: str) -> None:
        """The hand-over committed (this node owns the guest at the migration's generation):
        resume the paused copy, then report it resumed. Never while it is to be stopped."""
        m = guest.migration
        if (
            m is None
            or m.phase is not MigrationPhase.HANDED_OVER
            or m.dest != self._s.node
            or guest.owner != self._s.node
            or m.generation != guest.generation
            or seen.generation != guest.generation
            or guest.desired is not DesiredState.RUNNING
            or drain
        ):
            return
        if seen.paused:
            if out.act(ResumeGuest(guest.name, guest.spec.domain, guest.generation)):
                out.note("migration_resume", guest=guest.name, generation=guest.generation)
            return
        resumed = MigrationResumed(guest.name, self._s.node, guest.generation, out.wall())
        key = ProposalKey(ProposalKind.MIGRATION_RESUMED, guest.name)
        out.propose(Proposal(key, resumed, self._s.commit_timeout_s))

    # -- source -----------------------------------------------------------------------------

    def migrating_out(self, guest: GuestRecord) -> bool:
        """A migration of this node's guest is pending: only `as_source` decides about it."""
        m = guest.migration
        return (
            m is not None
            and m.phase is MigrationPhase.PENDING
            and m.source == self._s.node
            and guest.owner == self._s.node
        )

    def holds(self, guest: GuestRecord, maintenance: bool) -> bool:
        """Must this node keep the running guest although it drains? Yes while it migrates
        out, and in maintenance while it waits for the leader's evacuation intent (shared
        storage, every node has a `migration_uri`, no migration of it failed from here)."""
        if self.migrating_out(guest):
            return True
        return maintenance and live_evacuable(self._s, guest)

    def as_source(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> None:
        """One pass over a guest migrating out (lease valid): migrate, then commit what
        libvirt answered (the hand-over, or an abort)."""
        assert local.domains is not None
        m = guest.migration
        assert m is not None
        s = self._s
        dest_uri = s.nodes[m.dest].migration_uri if m.dest in s.nodes else ""
        action = LiveMigrate(
            guest.name,
            guest.spec.domain,
            m.dest,
            dest_uri,
            guest.generation,
            m.generation,
            s.migration_timeout_s,
        )
        if action.key in out.in_flight.actions:
            return
        answered = self._results.get(guest.name)
        if answered is not None and answered[0] == guest.generation:
            _, ok, detail = answered
            dest_state = state.node(m.dest).state
            if ok and dest_state is NodeState.UP:
                done = MigrationDone(guest.name, s.node, guest.generation, out.wall())
                key = ProposalKey(ProposalKind.MIGRATION_DONE, guest.name)
                out.propose(Proposal(key, done, s.commit_timeout_s))
            elif ok:
                self._abort(out, guest, f"the destination {m.dest} is {dest_state}")
            else:
                self._abort(out, guest, detail)
            return
        seen = local.domains.get(guest.spec.domain)
        why = ""
        if seen is None or not seen.running:
            why = "not running on the source"
        elif guest.desired is not DesiredState.RUNNING:
            why = "disabled"  # it is stopped here instead (a migrate call would be refused)
        elif not dest_uri:
            why = f"{m.dest} has no migration_uri"
        elif state.node(m.dest).state is not NodeState.UP:
            why = f"the destination {m.dest} is {state.node(m.dest).state}"
        elif state.node(m.dest).maintenance:
            why = f"the destination {m.dest} is in maintenance"
        if why:
            self._abort(out, guest, why)
            return
        if out.act(action):
            out.note("migrate", guest=guest.name, dest=m.dest, generation=m.generation)

    def _abort(self, out: Outbox, guest: GuestRecord, why: str) -> None:
        aborted = MigrationAborted(guest.name, self._s.node, guest.generation, why, out.wall())
        key = ProposalKey(ProposalKind.MIGRATION_ABORTED, guest.name)
        if out.propose(Proposal(key, aborted, self._s.commit_timeout_s)):
            out.note("migration_abort", guest=guest.name, why=why)

    def action_done(self, action: LiveMigrate | ResumeGuest, result: ActionResult) -> list[Event]:
        if isinstance(action, ResumeGuest):
            if result.ok:
                return [event("migration_resumed", guest=action.guest)]
            return [event("resume_failed", guest=action.guest, detail=result.detail)]
        if result.refused:
            # Not made (the lease or the generation moved on): the next pass decides again.
            return [event("migrate_refused", guest=action.guest, detail=result.detail)]
        # An unknown outcome counts as a failure: aborting is safe whatever libvirt did (the
        # destination never resumes without a hand-over; a source copy gone is a crash).
        self._results[action.guest] = (action.generation, result.ok, result.detail)
        return [event("migrate_returned", guest=action.guest, ok=result.ok, detail=result.detail)]

    def forget(self, state: ClusterState) -> None:
        """Drop answers whose hand-over or abort committed (called once per pass, cheap)."""
        for name in [n for n in self._results if not self._pending_here(state, n)]:
            del self._results[name]

    def _pending_here(self, state: ClusterState, name: str) -> bool:
        guest = state.guests.get(name)
        return guest is not None and self.migrating_out(guest)

    # -- leader -----------------------------------------------------------------------------

    def evacuate(
        self,
        out: Outbox,
        state: ClusterState,
        exclude: frozenset[str],
        network: Mapping[str, str] | None = None,
    ) -> None:
        """Leader: commit a migration intent for each running shared-storage guest of a node
        in maintenance, and for each guest in `network` (guest -> why: its owner lacked one of
        its networks for the hold-down, core.networks), towards a node
        `haagent.placement.plan` picks (memory, affinity, preferences, networks, start slots;
        guests migrating in count on their destination). A guest `live_evacuable` refuses
        is left to its owner, which stops it for a restart elsewhere."""
        s = self._s
        if not s.live_evacuation:
            return
        network = network or {}
        basis = tuple(
            (n, r.state, r.maintenance, r.missing_networks) for n, r in sorted(state.nodes.items())
        )
        # The network set is part of the key: a hold-down running out changes nothing else.
        key = (state.guests, (basis, tuple(sorted(network))))
        if self._idle is not None and self._idle == key:
            return
        draining = {n for n, r in state.nodes.items() if r.maintenance and r.state is NodeState.UP}
        moving: list[GuestRecord] = []
        hypothetical: list[GuestRecord] = []
        for guest in state.guests.values():
            m = guest.migrating
            if m is not None:
                # It occupies its destination from the intent on.
                hypothetical.append(replace(guest, owner=m.dest, state=GuestState.STARTING))
            elif (guest.owner in draining or guest.name in network) and live_evacuable(s, guest):
                moving.append(guest)
                hypothetical.append(replace(guest, owner=None, state=GuestState.STOPPED))
        if not moving:
            self._idle = key
            return
        result = plan(
            state.with_guests(hypothetical), s.capacity_mib, s.max_concurrent_starts, exclude
        )
        names = {g.name for g in moving}
        placements = [p for p in result.placements if p.guest in names]
        if not placements:
            # Nothing fits now (or every start slot is taken): plan again only once the
            # guests or the nodes changed (at 10,000 guests a plan costs milliseconds).
            self._idle = key
        for p in placements:
            if migration_refusal(state, state.guests[p.guest], p.node):
                continue
            intent = MigrateGuest(p.guest, p.node, p.expected_generation, s.node, out.wall())
            pkey = ProposalKey(ProposalKind.MIGRATE, p.guest)
            if not out.propose(Proposal(pkey, intent, s.commit_timeout_s)):
                continue
            if p.guest in network:
                why = network[p.guest]
                out.note("evacuate", guest=p.guest, node=p.node, how="live migration", why=why)
            else:
                out.note("evacuate", guest=p.guest, node=p.node, how="live migration")


def live_evacuable(settings: AgentSettings, guest: GuestRecord) -> bool:
    """May the cluster move `guest` off its owner by live migration, rather than by stopping
    it there and starting it elsewhere? Every hypervisor has a `migration_uri`, the storage
    allows it (shared), it runs and is wanted running, and no migration of it from its owner
    was aborted (the one rule for maintenance and network loss: a migration that failed
    once from a node is not retried from there, the guest is stopped and restarted instead,
    so a failing migration network cannot keep a guest on a bad node)."""
    if not settings.live_evacuation or guest.storage_kind_blocks_migration:
        return False
    m = guest.migration
    if m is not None and m.phase is MigrationPhase.ABORTED and m.source == guest.owner:
        return False
    return guest.desired is DesiredState.RUNNING and guest.state is GuestState.RUNNING
