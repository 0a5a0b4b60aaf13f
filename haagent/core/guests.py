"""Guest reconciliation: make this host run exactly the protected guests the committed state
says it owns, at their generation, and report what happened to them.

DESIGN rules 1 and 3: a guest starts here only after its `GuestStarting` at the current
generation committed, only while the lease is valid, and only once its storage gate agrees;
without a valid lease every protected domain here is destroyed (after the startup grace of a
new agent process); a domain owned elsewhere, or running with no committed start, is destroyed
too. Failures are reported as `GuestStopped`, counted only when the guest's own fault (see
`InstanceTracker.absence`), and the node gives up on a guest after `max_start_failures`.

No trust in unknown instances (issue 8 item 4). A running domain whose metadata names another
cluster, or whose generation is ahead of the committed one once this node's view is proven
fresh (a heartbeat sent after the first sighting committed, and this node applies its own entry
only after everything before it), is foreign: it has no committed start, so it is destroyed
like any domain running without one, with a `foreign_domain` event (README, "Safety model").
A start whose outcome is unknown (timeout, lost connection) stays unknown until the domain is
seen: the guest is neither started again nor reported stopped, so it is not reassigned while
a late `create()` may still complete; after `start_timeout_s` more without a sighting this node
destroys the domain at that generation and only then reports the start failed.

Each pass works in two sweeps: first over the domains the hypervisor runs (what must not run
here), then over the guests the state gives this node (what should run here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from haagent.commands import GuestRunning, GuestStarting, GuestStopped
from haagent.core.decisions import (
    Action,
    ActionResult,
    DestroyDomain,
    Event,
    LiveMigrate,
    LocalView,
    Proposal,
    ResumeGuest,
    StartGuest,
    StopGuest,
    event,
)
from haagent.core.drbd import DrbdStorage
from haagent.core.inflight import Outbox
from haagent.core.instances import InstanceTracker
from haagent.core.keys import ActionKey, ProposalKey, ProposalKind
from haagent.core.migration import Migrations
from haagent.core.raid1 import Raid1Storage
from haagent.core.settings import AgentSettings
from haagent.core.storage import SharedStorage, StorageGate
from haagent.model import (
    ClusterState,
    DesiredState,
    GuestRecord,
    GuestState,
    NodeRole,
    StorageKind,
)
from haagent.ports import DomainObservation

IN_MAINTENANCE = "node in maintenance"


def storage_gates(settings: AgentSettings) -> Mapping[StorageKind, StorageGate]:
    """One gate per storage kind. Every kind must have one: a guest whose storage has no gate
    is a programming error, never a guest started ungated."""
    gates: dict[StorageKind, StorageGate] = {
        StorageKind.SHARED: SharedStorage(),
        StorageKind.DRBD: DrbdStorage(settings.node, settings.commit_timeout_s),
        StorageKind.RAID1: Raid1Storage(settings.node, settings.commit_timeout_s),
    }
    missing = set(StorageKind) - set(gates)
    assert not missing, f"no storage gate for {sorted(missing)}"
    return gates


class GuestReconciler:
    def __init__(self, settings: AgentSettings, gates: Mapping[StorageKind, StorageGate]) -> None:
        self._settings = settings
        self._gates = gates
        self._config_domains = frozenset(spec.domain for spec in settings.guests)
        self.instances = InstanceTracker()
        self.migrations = Migrations(settings)

    # -- questions other concerns ask ------------------------------------------------------

    def protected(self, state: ClusterState, domain: str) -> tuple[bool, GuestRecord | None]:
        """Is `domain` a protected guest (in the config or the state), and its record."""
        record = state.by_domain.get(domain)
        return (record is not None or domain in self._config_domains), record

    def no_protected_running(self, state: ClusterState, local: LocalView) -> bool | None:
        """True when no protected domain runs here, None when that is unknown (the hypervisor
        could not be observed): unknown must never count as "nothing runs"."""
        if self._settings.role is NodeRole.WITNESS:
            return True
        if local.domains is None:
            return None
        return not any(
            d.running and self.protected(state, name)[0] for name, d in local.domains.items()
        )

    # -- the pass --------------------------------------------------------------------------

    def reconcile(
        self,
        out: Outbox,
        state: ClusterState,
        local: LocalView,
        *,
        lease_valid: bool,
        leaving: bool,
        startup_grace: bool,
        proven_at: float,
        evacuate: Mapping[str, str] | None = None,
        hold: bool = False,
    ) -> None:
        """One pass over this host. `local.domains` must have been observed (not None).

        `proven_at`: when this node sent the latest heartbeat it knows committed (its own
        clock); its state holds every entry committed before then. `evacuate`: guests to hand
        over although the node stays (guest -> reason, from core.networks), stopped and
        reported stopped like a drained node's. `hold`: the cluster is disarmed or this node
        frozen (core.arming): without a lease its guests are kept, not destroyed (nobody may
        declare it failed, so nobody recovers them elsewhere); nothing starts without one.
        A guest an admin moves elsewhere (`move_to`) is stopped here like a drained one."""
        assert local.domains is not None
        s = self._settings
        # Guests are handed over (stopped here, placed elsewhere) when the node leaves or an
        # admin put it in maintenance.
        drain = ""
        if leaving:
            drain = "node leaving"
        elif state.node(s.node).maintenance:
            drain = IN_MAINTENANCE
        evacuate = evacuate or {}
        self.migrations.forget(state)
        for domain, obs in sorted(local.domains.items()):
            record = state.by_domain.get(domain)
            why = drain or (self._handover(record, evacuate) if record is not None else "")
            keep = startup_grace or hold
            self._check_running(out, state, domain, obs, lease_valid, keep, why, proven_at)

        def wanted_here(guest: GuestRecord) -> bool:
            return (
                lease_valid
                and not drain
                and guest.name not in evacuate
                and guest.move_to in (None, s.node)
                and guest.owner == s.node
                and guest.desired is DesiredState.RUNNING
                and guest.state in (GuestState.STARTING, GuestState.RUNNING)
            )

        for gate in self._gates.values():
            gate.after_stop(out, state, local, wanted_here)
        if not lease_valid:
            return
        for guest in state.guests_of(s.node):
            self._converge(out, state, guest, local, drain or self._handover(guest, evacuate))

    def _handover(self, guest: GuestRecord, evacuate: Mapping[str, str]) -> str:
        """Why this node hands `guest` over although it stays ("" if it keeps it)."""
        if guest.move_to is not None and guest.move_to != self._settings.node:
            return f"moving to {guest.move_to}"
        return evacuate.get(guest.name, "")

    def _check_running(
        self,
        out: Outbox,
        state: ClusterState,
        domain: str,
        obs: DomainObservation,
        lease_valid: bool,
        keep_without_lease: bool,
        drain: str,
        proven_at: float,
    ) -> None:
        """One domain the hypervisor reports. A running protected domain stays only while this
        node holds a valid lease, owns the guest at the instance's generation (or an older
        view than the instance) and has its start committed; otherwise it is destroyed."""
        s = self._settings
        is_protected, guest = self.protected(state, domain)
        if not obs.running or not is_protected:
            return
        if not lease_valid:
            if not keep_without_lease:
                self._destroy(out, domain, "no valid lease", obs.generation)
            return
        if obs.cluster is not None and obs.cluster != s.cluster:
            self._foreign(out, domain, f"its metadata names cluster {obs.cluster!r}", obs)
            return
        if guest is None:
            return  # not yet registered by the leader: nobody owns it yet
        if self.migrations.incoming(guest, obs):
            return  # a migration's paused copy: kept until its hand-over or abort commits
        if obs.generation is not None and obs.generation > guest.generation:
            first = self.instances.first_seen_ahead(domain, obs.generation, out.now)
            if proven_at > first:
                why = f"generation {obs.generation} is ahead of the committed {guest.generation}"
                self._foreign(out, domain, why, obs)
            return  # else this view may be older than the instance: wait for it to catch up
        if obs.generation is not None:
            self.instances.saw_running(domain, obs.generation, out.now)
        if guest.owner != s.node:
            self._destroy(
                out,
                domain,
                f"owned by {guest.owner} at generation {guest.generation}"
                f" (found generation {obs.generation})",
            )
            return
        stopping = guest.desired is DesiredState.STOPPED or bool(drain)
        if stopping and not self.migrations.holds(guest, drain == IN_MAINTENANCE):
            stop = StopGuest(guest.name, domain, guest.generation, s.shutdown_timeout_s)
            if out.act(stop):
                out.note("stop", guest=guest.name, reason=drain or "disabled")
        elif guest.state is GuestState.STARTING:
            running = GuestRunning(guest.name, s.node, guest.generation, out.wall())
            key = ProposalKey(ProposalKind.GUEST_RUNNING, guest.name)
            out.propose(Proposal(key, running, s.commit_timeout_s))
        elif guest.state is not GuestState.RUNNING:
            # Running with no committed start (the state says stopped): it may be moved at
            # any moment, so it must not run. It is started again the proper way. A paused
            # one is a migration's copy whose hand-over never committed: expected after the
            # source died mid-migration, so the reason says so rather than read like an error.
            why = (
                f"a migration's paused copy, not handed over (the guest is {guest.state})"
                if obs.paused
                else f"running while {guest.state} (no committed start)"
            )
            self._destroy(out, domain, why, obs.generation)

    def _converge(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView, drain: str
    ) -> None:
        """Bring one guest this node owns towards its desired state (lease valid)."""
        assert local.domains is not None
        s = self._settings
        domain = guest.spec.domain
        gate = self._gates[guest.spec.storage]
        if self.migrations.migrating_out(guest):
            self.migrations.as_source(out, state, guest, local)
            return
        seen = local.domains.get(domain)
        if seen is not None and seen.running:
            self.instances.forget_start(domain)
            self.instances.resolve_unknown_start(domain)
            gate.while_running(out, state, guest, local)
            self.migrations.resume(out, guest, seen, drain)
            return
        start = StartGuest(guest.name, domain, guest.generation)
        if start.key in out.in_flight.actions:
            return
        unknown_since = self.instances.unknown_start_since(domain, guest.generation)
        if unknown_since is not None:
            hurry = guest.desired is DesiredState.STOPPED or bool(drain)
            self._resolve_unknown_start(out, guest, unknown_since, hurry=hurry)
            return
        if guest.desired is DesiredState.STOPPED or drain:
            if guest.state in (GuestState.RUNNING, GuestState.STARTING):
                reason = f"stopped ({drain or 'disabled'})"
                out.propose(self._stopped(out, guest, failed=False, reason=reason))
            return
        if s.node in guest.failed_nodes:
            return  # this node gave up on it: the leader moves it elsewhere
        if guest.state is GuestState.RUNNING:
            absence = self.instances.absence(domain, guest.generation, out.now, s.failure_reset_s)
            stopped = self._stopped(
                out,
                guest,
                failed=absence.crashed,
                reason=f"not running: {absence.why}",
                failures=0 if absence.fresh_count else guest.failures,
                fresh_count=absence.fresh_count,
            )
            if out.propose(stopped):
                name = "guest_lost" if absence.crashed else "guest_not_running"
                out.note(name, guest=guest.name, generation=guest.generation, why=absence.why)
        elif guest.state is GuestState.STOPPED and state.node(s.node).lacks(guest.spec):
            return  # never started where its network is missing: the leader moves it
        elif guest.state is GuestState.STOPPED:
            starting = GuestStarting(guest.name, s.node, guest.generation, out.wall())
            key = ProposalKey(ProposalKind.GUEST_STARTING, guest.name)
            out.propose(Proposal(key, starting, s.commit_timeout_s))
        elif guest.state is GuestState.STARTING:
            self._start(out, state, guest, local, gate, start)

    def _start(
        self,
        out: Outbox,
        state: ClusterState,
        guest: GuestRecord,
        local: LocalView,
        gate: StorageGate,
        start: StartGuest,
    ) -> None:
        """The intent to start committed: report how an earlier start went, else start it
        once its storage allows."""
        domain = guest.spec.domain
        failures = guest.failures
        why_failed = self.instances.failed_start(domain, guest.generation)
        if why_failed is not None:
            reason = f"start failed: {why_failed}"
            out.propose(self._stopped(out, guest, failed=True, reason=reason, failures=failures))
            return
        returned_at = self.instances.start_returned_at(domain, guest.generation)
        if returned_at is not None:
            if local.observed_at > returned_at:
                self.instances.forget_start(domain)
                reason = "exited right after start"
                out.propose(
                    self._stopped(out, guest, failed=True, reason=reason, failures=failures)
                )
            return
        blocked = gate.may_start(state, guest, local)
        if blocked is not None and blocked.give_up:
            self.instances.stop_waiting(domain)
            out.propose(
                self._stopped(
                    out,
                    guest,
                    failed=True,
                    reason=f"cannot start here: {blocked.why}",
                    failures=self._settings.max_start_failures,
                )
            )
            return
        if blocked is not None:
            if self.instances.wait_changed(domain, blocked.why):
                out.note("start_waits", guest=guest.name, why=blocked.why)
            return
        if not gate.before_start(out, state, guest, local):
            return
        self.instances.stop_waiting(domain)
        self.instances.forget_start(domain)
        legs = gate.start_legs(state, guest)
        out.act(replace(start, legs=legs) if legs else start)
        out.note("start", guest=guest.name, generation=guest.generation)

    def _resolve_unknown_start(
        self, out: Outbox, guest: GuestRecord, since: float, *, hurry: bool = False
    ) -> None:
        """A start came back unknown at `since` and the domain has not been seen running.
        Wait (a late `create()` may still complete and is then reported running), and after
        `start_timeout_s` make sure it cannot come up: destroy it at that generation, and only
        once that destroy succeeded report the start failed (the leader may then move it).

        `hurry`: the guest is to be stopped anyway (disabled, or this node leaves or is in
        maintenance), so waiting for a late `create()` gains nothing: destroy it now (the
        adapter's destroy waits for a `create()` still running) and report it stopped, not
        failed. A clean shutdown must not hang for `start_timeout_s` on an unknown start."""
        s = self._settings
        domain = guest.spec.domain
        if not hurry and out.now < since + s.start_timeout_s:
            return
        if self.instances.stopped_here_at(domain, guest.generation):
            self.instances.resolve_unknown_start(domain)
            reason = "start outcome unknown, not seen running, destroyed"
            if hurry:
                out.propose(self._stopped(out, guest, failed=False, reason=reason))
                return
            out.propose(
                self._stopped(out, guest, failed=True, reason=reason, failures=guest.failures)
            )
            return
        self._destroy(out, domain, "start outcome unknown, not seen running", guest.generation)

    # -- results of this module's actions ---------------------------------------------------

    def action_done(
        self, key: ActionKey, action: Action, result: ActionResult, now: float
    ) -> list[Event]:
        events: list[Event] = []
        if isinstance(action, StartGuest):
            if result.ok:
                self.instances.start_returned(action.domain, action.generation, now)
            elif result.refused:
                # Not made: nothing to count, nothing unknown. The next pass decides again.
                events.append(event("start_refused", guest=action.guest, detail=result.detail))
            elif result.unknown:
                # Never a failure: the domain may still come up. Look again (see
                # `_resolve_unknown_start`).
                events.append(event("start_unknown", guest=action.guest, detail=result.detail))
                self.instances.start_unknown(action.domain, action.generation, now)
            else:
                # Reported (and counted against the limit) by the next pass, which knows the
                # guest's failure count; until then it is not started again.
                events.append(event("start_failed", guest=action.guest, detail=result.detail))
                self.instances.start_failed(action.domain, action.generation, result.detail)
        elif isinstance(action, LiveMigrate | ResumeGuest):
            events.extend(self.migrations.action_done(action, result))
        elif isinstance(action, StopGuest | DestroyDomain):
            if not result.ok:
                events.append(event("stop_failed", key=str(key), detail=result.detail))
            elif action.generation is not None:
                self.instances.stopped_here(action.domain, action.generation)
        return events

    # -- helpers ---------------------------------------------------------------------------

    def _destroy(
        self, out: Outbox, domain: str, reason: str, generation: int | None = None
    ) -> None:
        if out.act(DestroyDomain(domain, reason, generation)):
            out.note("destroy", domain=domain, reason=reason)

    def _foreign(self, out: Outbox, domain: str, why: str, obs: DomainObservation) -> None:
        """A domain with no committed start that claims to be one: never adopted, destroyed,
        and reported as an alert (`foreign_domain`)."""
        if out.act(DestroyDomain(domain, f"foreign: {why}", obs.generation)):
            out.note("foreign_domain", domain=domain, why=why, cluster=obs.cluster)

    def _stopped(
        self,
        out: Outbox,
        guest: GuestRecord,
        *,
        failed: bool,
        reason: str,
        failures: int = 0,
        fresh_count: bool = False,
    ) -> Proposal:
        """`failures`: the failures counted before this one (0 when `fresh_count`)."""
        s = self._settings
        give_up = failed and failures + 1 >= s.max_start_failures
        stopped = GuestStopped(
            guest.name,
            s.node,
            guest.generation,
            failed,
            give_up,
            reason + (" - giving up" if give_up else ""),
            out.wall(),
            fresh_count,
        )
        return Proposal(
            ProposalKey(ProposalKind.GUEST_STOPPED, guest.name), stopped, s.commit_timeout_s
        )
