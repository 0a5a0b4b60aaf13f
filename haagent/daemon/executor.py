"""The action executor: runs the core's actions against the adapters, with timeouts.

Contract:
- `dispatch(action)` chooses the handler synchronously, in the pass that produced the action.
  The dispatch is exhaustive over `haagent.agent.Action` (mypy checks it): an action type
  without a handler is a programming error and raises `UnknownActionError` there, which ends the
  loop (the watchdog makes a crash safe). It is never reported as a success.
- The returned coroutine never raises for an operating error: a failed, refused or timed-out
  adapter call, or an unexpected exception inside an adapter, becomes `ActionResult(False)`.
  Every adapter call has a deadline, so an action cannot stay "in flight" forever.
- DRBD actions (promote, demote, resume-io) run through the `Replicas` port (the daemon's
  `DrbdReplicas`: `resources/drbd.sh`). A node without DRBD resources fails them explicitly.
  A promotion that timed out may still complete (DRBD 8.4 runs the fence-peer handler inside
  `drbdadm primary` when the peer is gone): its result is unknown, and the next pass decides
  on what the watcher then reports.
- A start, a migration, a resume, a promote and a leg change are checked by the
  `ActAuthority` right before the call (`require`, or `permit` where the adapter takes a
  permit), not only when the core decided them: if the lease has lapsed or the committed
  generation moved on, the call is not made and the result is `ActionResult(refused=True)`,
  which the core never counts as a failure. For a start, a migration and a resume the adapter
  checks once more in the thread that makes the call and holds a permit until the call returns
  (haagent.daemon.authority).
- A fence is checked the same way (`check_fence`) before it starts and again before every
  power-off call the fence levels make: the attempt must still be the one in flight
  (haagent.core.fencing) and the lease valid, or nothing more is switched off and the
  attempt's verdict is a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Never

from haagent.agent import (
    Action,
    ActionResult,
    AgentSettings,
    AttachLeg,
    DemoteReplica,
    DestroyDomain,
    DetachLeg,
    LiveMigrate,
    PromoteReplica,
    ResumeGuest,
    ResumeReplicaIo,
    RunFence,
    StartGuest,
    StopGuest,
)
from haagent.config import Config
from haagent.core.fencing import FENCER_GRACE_S
from haagent.daemon.authority import ActAuthority
from haagent.daemon.telemetry import Telemetry
from haagent.ports import (
    FenceOutcome,
    Fencer,
    Hypervisor,
    HypervisorError,
    Mirrors,
    RefusedError,
    ReplicaError,
    Replicas,
    UnknownOutcomeError,
)

log = logging.getLogger("haagent")

MIN_DESTROY_TIMEOUT_S = 10.0
STOP_GRACE_EXTRA_S = 10.0
# Beyond the wrapper's own timeout (DrbdReplicas kills drbd.sh after it): only a bug needs it.
REPLICA_GRACE_S = 10.0
# Beyond `migration_timeout_s`, which the adapter enforces itself by aborting the job: only a
# bug or a hung libvirt needs it (the outcome is then unknown, and the core aborts).
MIGRATE_GRACE_S = 30.0
# One attach or detach of a raid1 leg (a libvirt device hot-plug): past this its outcome is
# unknown, and the core decides again on what the guest's array then shows.
LEG_TIMEOUT_S = 30.0


class UnknownActionError(TypeError):
    """The core produced an action type the executor has no handler for (a programming
    error: adding an action type to the core means adding its handler here)."""


class ActionExecutor:
    def __init__(
        self,
        config: Config,
        settings: AgentSettings,
        hypervisor: Hypervisor | None,
        fencer: Fencer,
        telemetry: Telemetry,
        authority: ActAuthority,
        replicas: Replicas | None = None,
        replica_timeout_s: float = 0.0,
        mirrors: Mirrors | None = None,
    ) -> None:
        """`replica_timeout_s`: how long `replicas` itself lets one DRBD command run.
        `mirrors`: raid1 guests' legs (None: no raid1 guest can run here)."""
        self._config = config
        self._s = settings
        self._hv = hypervisor
        self._fencer = fencer
        self._telemetry = telemetry
        self._authority = authority
        self._replicas = replicas
        self._replica_timeout_s = replica_timeout_s
        self._mirrors = mirrors

    def dispatch(self, action: Action) -> Coroutine[Any, Any, ActionResult]:
        """The coroutine that carries out `action`; raises UnknownActionError for a type without
        a handler (see the module contract)."""
        match action:
            case RunFence():
                return self._guarded(action, self._fence(action))
            case StartGuest():
                return self._guarded(action, self._start(action))
            case StopGuest():
                return self._guarded(action, self._stop(action))
            case DestroyDomain():
                return self._guarded(action, self._destroy(action))
            case PromoteReplica() | DemoteReplica() | ResumeReplicaIo():
                return self._guarded(action, self._replica(action))
            case LiveMigrate():
                return self._guarded(action, self._migrate(action))
            case ResumeGuest():
                return self._guarded(action, self._resume(action))
            case AttachLeg() | DetachLeg():
                return self._guarded(action, self._leg(action))
            case _:
                _exhaustive: Never = action  # mypy: every Action type has a case above
                raise UnknownActionError(f"no handler for action {action!r}")

    async def _guarded(self, action: Action, work: Awaitable[ActionResult]) -> ActionResult:
        try:
            return await work
        except Exception as exc:  # An adapter bug must not kill the loop: report a failure.
            log.exception("action %s failed unexpectedly", action.key)
            # Nobody knows how far a start got: it stays unknown until it is observed.
            unknown = isinstance(action, StartGuest)
            return ActionResult(False, f"unexpected error: {exc}", unknown=unknown)

    async def _fence(self, action: RunFence) -> ActionResult:
        timeout_s = self._s.fence_timeout_s
        levels = self._config.fence_levels(action.node)

        def may_act() -> str | None:
            # Asked before every power-off call: an attempt a new leader gave up, or whose
            # verdict is in, must not switch off a node that may have rejoined since.
            return self._authority.check_fence(action.node, action.epoch, action.attempt)

        refused = may_act()
        if refused is not None:
            log.warning("fence %s refused right before the call: %s", action.node, refused)
            detail = f"not run: {refused}"
            return ActionResult(False, detail, FenceOutcome(False, detail), refused=True)
        try:
            # The fencer bounds itself; this outer deadline only guards against a bug there
            # leaving the node's fencing "in flight" forever.
            outcome = await asyncio.wait_for(
                self._fencer.fence(action.node, levels, timeout_s, may_act=may_act),
                timeout_s + FENCER_GRACE_S,
            )
        except TimeoutError:
            outcome = FenceOutcome(False, f"fencer did not return in {timeout_s}s")
        self._telemetry.fence_operations.labels(action.node, "ok" if outcome.ok else "failed").inc()
        log.warning(
            "fence %s: %s (%s)", action.node, "OK" if outcome.ok else "FAILED", outcome.detail
        )
        return ActionResult(outcome.ok, outcome.detail, outcome)

    def _hypervisor(self) -> Hypervisor:
        if self._hv is None:
            raise HypervisorError("no hypervisor on this node")
        return self._hv

    async def _start(self, action: StartGuest) -> ActionResult:
        try:
            hv = self._hypervisor()
            xml = self._config.guest_xml(action.guest)
            if action.legs:
                # A raid1 guest starts from the legs the core chose (never a stale one).
                if xml is None:
                    raise HypervisorError(f"{action.guest}: a raid1 guest needs its xml")
                # Imported here: it brings the guest-agent and mdstat readers, which only a
                # host of raid1 guests needs in memory (issue 7: RSS).
                from haagent.resources.raid1_disks import LegDiskError, with_leg_disks

                try:
                    xml = with_leg_disks(xml, action.legs)
                except LegDiskError as exc:
                    raise HypervisorError(f"{action.guest}: {exc}") from None
            authorise = self._authority.permit(action.key, action.guest, action.generation)
            await asyncio.wait_for(
                hv.start(
                    action.domain,
                    xml,
                    self._s.cluster,
                    self._s.node,
                    action.generation,
                    authorise=authorise,
                ),
                self._s.start_timeout_s,
            )
        except RefusedError as exc:
            log.warning("start %s not made: %s", action.guest, exc)
            return ActionResult(False, str(exc), refused=True)
        except TimeoutError:
            # wait_for cancels our await, not a create() already running in libvirt's worker
            # thread: the start may still complete, so its outcome is unknown, not failed.
            detail = f"start did not return in {self._s.start_timeout_s}s (outcome unknown)"
            return ActionResult(False, detail, unknown=True)
        except UnknownOutcomeError as exc:
            return ActionResult(False, str(exc), unknown=True)
        except HypervisorError as exc:
            return ActionResult(False, str(exc))
        log.info("started %s at generation %d", action.guest, action.generation)
        return ActionResult(True)

    async def _migrate(self, action: LiveMigrate) -> ActionResult:
        """The source's libvirt migration, authorised like a start (the lease and the source's
        committed generation, right before the call). Any failure, even an unknown outcome,
        is reported as not done: the core then aborts, which is safe whatever libvirt did
        (haagent.core.migration)."""
        t0 = time.monotonic()
        try:
            hv = self._hypervisor()
            authorise = self._authority.permit(action.key, action.guest, action.generation)
            await asyncio.wait_for(
                hv.migrate(
                    action.domain,
                    action.dest_uri,
                    self._s.cluster,
                    action.dest,
                    action.dest_generation,
                    action.timeout_s,
                    authorise=authorise,
                ),
                action.timeout_s + MIGRATE_GRACE_S,
            )
        except RefusedError as exc:
            log.warning("migrate %s not made: %s", action.guest, exc)
            return ActionResult(False, str(exc), refused=True)
        except TimeoutError:
            detail = f"migrate did not return in {action.timeout_s + MIGRATE_GRACE_S}s"
            log.error("migrate %s to %s: %s", action.guest, action.dest, detail)
            return ActionResult(False, detail, unknown=True)
        except UnknownOutcomeError as exc:
            log.error("migrate %s to %s: outcome unknown: %s", action.guest, action.dest, exc)
            return ActionResult(False, str(exc), unknown=True)
        except HypervisorError as exc:
            log.error("migrate %s to %s failed: %s", action.guest, action.dest, exc)
            return ActionResult(False, str(exc))
        took = time.monotonic() - t0
        self._telemetry.agent.migration_seconds.observe(took)
        log.warning("migrated %s to %s in %.3fs", action.guest, action.dest, took)
        return ActionResult(True)

    async def _resume(self, action: ResumeGuest) -> ActionResult:
        """The destination resumes its copy, authorised against its lease and the committed
        hand-over (it owns the guest at the copy's generation)."""
        try:
            hv = self._hypervisor()
            authorise = self._authority.permit(action.key, action.guest, action.generation)
            await asyncio.wait_for(
                hv.resume(action.domain, authorise=authorise), MIN_DESTROY_TIMEOUT_S
            )
        except RefusedError as exc:
            return ActionResult(False, str(exc), refused=True)
        except (HypervisorError, TimeoutError) as exc:
            return ActionResult(False, str(exc) or "timed out")
        log.warning("resumed %s at generation %d", action.guest, action.generation)
        return ActionResult(True)

    async def _stop(self, action: StopGuest) -> ActionResult:
        t0 = time.monotonic()
        try:
            hv = self._hypervisor()
            await asyncio.wait_for(
                hv.stop(action.domain, action.timeout_s), action.timeout_s + STOP_GRACE_EXTRA_S
            )
        except (HypervisorError, TimeoutError) as exc:
            return ActionResult(False, str(exc) or "timed out")
        # Logged once the domain is confirmed inactive: a hand-over's evidence (tests order it
        # before the new owner's start).
        log.info("stopped %s in %.3fs", action.domain, time.monotonic() - t0)
        return ActionResult(True)

    async def _destroy(self, action: DestroyDomain) -> ActionResult:
        grace_s = self._s.stop_grace_s
        t0 = time.monotonic()
        try:
            hv = self._hypervisor()
            await asyncio.wait_for(hv.destroy(action.domain), max(grace_s, MIN_DESTROY_TIMEOUT_S))
        except (HypervisorError, TimeoutError) as exc:
            return ActionResult(False, str(exc) or "timed out")
        took = time.monotonic() - t0
        # Outlasting stop_grace_s weakens the lease argument (README "Timing on real hosts").
        level = logging.WARNING if took <= grace_s else logging.ERROR
        log.log(level, "destroyed %s in %.3fs: %s", action.domain, took, action.reason)
        return ActionResult(True)

    async def _replica(
        self, action: PromoteReplica | DemoteReplica | ResumeReplicaIo
    ) -> ActionResult:
        replicas = self._replicas
        if replicas is None:
            detail = f"no DRBD resource of this node is configured ({action.resource!r})"
            log.error("%s: %s", action.key, detail)
            return ActionResult(False, detail)
        if isinstance(action, PromoteReplica):
            # Checked at the moment of acting, like a start (README, "Safety model").
            try:
                self._authority.require(action.key, action.guest, action.generation)
            except RefusedError as exc:
                log.warning("promote %s not made: %s", action.resource, exc)
                return ActionResult(False, str(exc), refused=True)
        match action:
            case PromoteReplica():
                call = replicas.promote(action.resource)
            case DemoteReplica():
                call = replicas.demote(action.resource)
            case ResumeReplicaIo():
                call = replicas.resume_io(action.resource)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(call, self._replica_timeout_s + REPLICA_GRACE_S)
        except TimeoutError:
            detail = f"{action.key}: no answer in {self._replica_timeout_s}s (outcome unknown)"
            log.error("%s", detail)
            return ActionResult(False, detail, unknown=True)
        except ReplicaError as exc:
            log.error("%s failed: %s", action.key, exc)
            return ActionResult(False, str(exc))
        log.warning("%s done in %.3fs", action.key, time.monotonic() - t0)
        return ActionResult(True)

    async def _leg(self, action: AttachLeg | DetachLeg) -> ActionResult:
        """Attach or detach a raid1 leg of a guest running here, checked against the lease
        and the committed generation right before the call (like a start)."""
        mirrors = self._mirrors
        if mirrors is None:
            return ActionResult(False, f"{action.key}: no raid1 legs on this node")
        try:
            self._authority.require(action.key, action.guest, action.generation)
        except RefusedError as exc:
            log.warning("%s", exc)
            return ActionResult(False, str(exc), refused=True)
        match action:
            case AttachLeg():
                call = mirrors.attach_leg(action.guest, action.leg, action.source)
            case DetachLeg():
                call = mirrors.detach_leg(action.guest, action.leg)
        try:
            await asyncio.wait_for(call, LEG_TIMEOUT_S)
        except TimeoutError:
            return ActionResult(False, f"{action.key}: no answer in {LEG_TIMEOUT_S}s", unknown=True)
        except HypervisorError as exc:
            log.error("%s failed: %s", action.key, exc)
            return ActionResult(False, str(exc))
        log.warning("%s done", action.key)
        return ActionResult(True)
