"""The admin service: enable/disable a guest, node maintenance, what-if, tolerated failures.

Contract:
- Admin commands go through Raft like everything else; the answer is the replicated command's
  outcome (accepted, refused, unknown). Unknown names are refused before proposing (404).
- What-if and the tolerated-failures count grow with nodes x guests (the count tries
  combinations of failed nodes, one placement of every guest each), so they never run on the
  loop: they run in the offload (thread or process, see `haagent.daemon.offload`), under a
  time budget.
- The tolerated-failures count is looked at every `TOLERANCE_INTERVAL_S` while this node
  holds a lease (`ToleranceSchedule`): while the guests and the nodes' states are the very
  same as when it was computed, the last count is confirmed (its age restarts); once they
  changed, it is recomputed, under `TOLERANCE_BUDGET_S`, when they have stayed the same for a
  whole interval, or when the count is `TOLERANCE_MAX_AGE_S` old while they keep changing. A
  count cut short by the budget is a lower bound and says so. Its age is shown with it
  (staleness <= 2 intervals + budget + one queued job once the cluster settled, <= the max
  age + budget while it keeps changing, in a healthy agent). Why wait for a settled state: at
  a cold start or a failover the state changes with every start, and every agent of the
  cluster computed a count (up to the budget in CPU each) on every interval, each one stale
  by the time it was done; at 12 nodes / 500 guests a count takes the whole budget (issue 7:
  12 agents on one 2-core host spent 16 CPU-s in their worker processes before all held a
  lease, 10 with this schedule). A
  what-if answer reuses that count when it is younger than `TOLERANCE_REUSE_S`, else computes
  one under `WHATIF_BUDGET_S`.
- One what-if at a time: a second request while one runs is answered 503 (retry), so requests
  cannot pile up work behind the scrapes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from haagent.agent import AgentSettings
from haagent.api import ApiError
from haagent.commands import ConfirmFenced, MigrateGuest, SetDesired, SetMaintenance
from haagent.config import Config
from haagent.consensus import RaftConsensus
from haagent.daemon.telemetry import Telemetry, Tolerance, state_size
from haagent.model import ClusterState, DesiredState, NodeState
from haagent.ports import Outcome, OutcomeKind
from haagent.statemachine_migration import migration_refusal
from haagent.whatif import tolerated_failures, what_if

log = logging.getLogger("haagent")

TOLERANCE_INTERVAL_S = 5.0
TOLERANCE_BUDGET_S = 2.0
TOLERANCE_MAX_AGE_S = 30.0
TOLERANCE_REUSE_S = 2 * TOLERANCE_INTERVAL_S
WHATIF_BUDGET_S = 5.0

ToleranceBasis = tuple[object, tuple[object, ...]]
"""What the count depends on: the guests mapping (compared by identity: the state is immutable,
so the same object means nothing changed in between) and each node's state, role and
maintenance (not heartbeats)."""


def tolerance_basis(state: ClusterState) -> ToleranceBasis:
    return (
        state.guests,
        tuple((n, r.state, r.role, r.maintenance) for n, r in sorted(state.nodes.items())),
    )


def _same(a: ToleranceBasis | None, b: ToleranceBasis) -> bool:
    return a is not None and a[0] is b[0] and a[1] == b[1]


class ToleranceSchedule:
    """Whether a look at the count (one every `TOLERANCE_INTERVAL_S`) confirms the last
    count, waits for the cluster to settle, or spends the budget on a new one (see the module
    docstring). Pure bookkeeping, O(nodes) per look; `now` from the caller's clock."""

    def __init__(self, started_at: float) -> None:
        self._computed: ToleranceBasis | None = None
        self._looked: ToleranceBasis | None = None
        # The start counts as a count of age 0: a cold start waits to settle like a change.
        self._computed_at = started_at

    def decide(self, basis: ToleranceBasis, now: float) -> Literal["confirm", "wait", "compute"]:
        """What to do at this look; "compute" assumes the caller computes now."""
        settled = _same(self._looked, basis)
        self._looked = basis
        if _same(self._computed, basis):
            return "confirm"
        if settled or now - self._computed_at >= TOLERANCE_MAX_AGE_S:
            self.computed(basis, now)
            return "compute"
        return "wait"

    def computed(self, basis: ToleranceBasis, now: float) -> None:
        """A count of `basis` is (being) computed now (also by a what-if request)."""
        self._computed, self._computed_at = basis, now

    def failed(self) -> None:
        """The count last decided on was not computed: the next look decides afresh."""
        self._computed = None


def compute_tolerance(
    state: ClusterState,
    capacity_mib: dict[str, int],
    voters: list[str],
    commit_index: int,
    budget_s: float,
) -> Tolerance:
    """The tolerated-failures count under a time budget (offload: thread or process)."""
    t0 = time.monotonic()
    deadline = t0 + budget_s
    count, detail = tolerated_failures(
        state, capacity_mib, voters, lambda: time.monotonic() > deadline
    )
    done = time.monotonic()
    return Tolerance(count, detail, done, done - t0, commit_index)


def compute_whatif(
    state: ClusterState,
    capacity_mib: dict[str, int],
    fail: list[str],
    voters: list[str],
    tolerated: tuple[int, str],
) -> dict[str, Any]:
    """One what-if answer with a tolerated count computed before (offload)."""
    return what_if(state, capacity_mib, fail, voters, tolerated).to_json()


class AdminService:
    def __init__(
        self,
        config: Config,
        settings: AgentSettings,
        telemetry: Telemetry,
        consensus: Callable[[], RaftConsensus | None],
        lease_valid: Callable[[float], bool],
    ) -> None:
        self._config = config
        self._s = settings
        self._telemetry = telemetry
        self._consensus = consensus
        self._lease_valid = lease_valid
        self._tolerance_due_at = -float("inf")
        self._tolerance_running = False
        self._whatif_running = False
        self._tolerance_schedule = ToleranceSchedule(time.monotonic())

    def _serving(self) -> RaftConsensus:
        """The consensus adapter for a request; 503 between the API binding and Raft
        starting."""
        consensus = self._consensus()
        if consensus is None:
            raise ApiError(503, "the agent is starting")
        return consensus

    # -- tolerated failures (off the loop) -------------------------------------------------

    def tolerance_due(self, now: float) -> bool:
        """O(1), for the loop: should a refresh start now?"""
        return (
            not self._tolerance_running and now >= self._tolerance_due_at and self._lease_valid(now)
        )

    async def refresh_tolerance(self, state: ClusterState, commit_index: int) -> None:
        """Confirm, keep or recompute the count (`ToleranceSchedule`), off the loop. Spawned
        by the loop, never awaited by a pass."""
        now = time.monotonic()
        self._tolerance_due_at = now + TOLERANCE_INTERVAL_S
        decision = self._tolerance_schedule.decide(tolerance_basis(state), now)
        last = self._telemetry.tolerance
        if decision == "confirm" and last is not None:
            self._telemetry.tolerance = replace(last, computed_at=now)
        if decision != "compute":
            return
        self._tolerance_running = True
        try:
            self._telemetry.tolerance = await self._tolerance(
                state, commit_index, TOLERANCE_BUDGET_S
            )
        except BaseException:
            self._tolerance_schedule.failed()
            raise
        finally:
            self._tolerance_running = False

    async def _tolerance(
        self, state: ClusterState, commit_index: int, budget_s: float
    ) -> Tolerance:
        tolerance = await self._telemetry.offload.run(
            compute_tolerance,
            state,
            self._s.capacity_mib,
            list(self._config.nodes),
            commit_index,
            budget_s,
            size=max(1, len(state.nodes)) * max(1, len(state.guests)),
        )
        self._telemetry.whatif_seconds.set(tolerance.took_s)
        return tolerance

    # -- handlers --------------------------------------------------------------------------

    async def whatif(self, fail: list[str]) -> dict[str, Any]:
        unknown = [n for n in fail if n not in self._config.nodes]
        if unknown:
            raise ApiError(
                400,
                f"unknown node(s) {', '.join(unknown)}; "
                f"nodes: {', '.join(sorted(self._config.nodes))}",
            )
        view = self._serving().view()
        if self._whatif_running:
            raise ApiError(503, "another what-if is being computed; retry in a moment")
        self._whatif_running = True
        try:
            now = time.monotonic()
            tol = self._telemetry.tolerance
            if tol is None or now - tol.computed_at > TOLERANCE_REUSE_S:
                tol = await self._tolerance(view.state, view.commit_index, WHATIF_BUDGET_S)
                self._telemetry.tolerance = tol
                self._tolerance_schedule.computed(tolerance_basis(view.state), now)
            doc = await self._telemetry.offload.run(
                compute_whatif,
                view.state,
                self._s.capacity_mib,
                fail,
                list(self._config.nodes),
                (tol.tolerated, tol.detail),
                size=state_size(view),
            )
        finally:
            self._whatif_running = False
        now = time.monotonic()
        doc["view_fresh"] = self._lease_valid(now)
        doc["tolerated_age_s"] = round(now - tol.computed_at, 3)
        doc["tolerated_took_s"] = round(tol.took_s, 3)
        return doc

    async def set_desired(self, guest: str, running: bool) -> Outcome:
        consensus = self._serving()
        record = consensus.view().state.guests.get(guest)
        if record is None:
            raise ApiError(404, f"unknown guest {guest!r}")
        desired = DesiredState.RUNNING if running else DesiredState.STOPPED
        # Conditional on the version this decision was made on: a late re-delivery of this
        # command can never undo a newer enable/disable.
        command = SetDesired(
            guest,
            desired,
            f"api@{self._config.node}",
            time.time(),
            expect_version=record.admin_version,
        )
        log.info("admin: %s %s", "enable" if running else "disable", guest)
        return await consensus.propose(command, self._s.commit_timeout_s)

    async def set_maintenance(self, node: str, on: bool) -> Outcome:
        consensus = self._serving()
        if node not in self._config.nodes:
            raise ApiError(404, f"unknown node {node!r}")
        version = consensus.view().state.node(node).admin_version
        command = SetMaintenance(
            node, on, f"api@{self._config.node}", time.time(), expect_version=version
        )
        log.info("admin: maintenance %s %s", "on" if on else "off", node)
        return await consensus.propose(command, self._s.commit_timeout_s)

    async def migrate(self, guest: str, node: str, generation: int | None) -> Outcome:
        """Live-migrate `guest` to `node`: propose `MigrateGuest` conditional on `generation`
        (None: the one this agent's view shows), so a request decided on a guest that moved,
        restarted or migrated since is refused by `apply`, never applied to its new instance.
        Refused early, with the same words as `apply`, when this view already says no."""
        consensus = self._serving()
        state = consensus.view().state
        record = state.guests.get(guest)
        if record is None:
            raise ApiError(404, f"unknown guest {guest!r}")
        if node not in self._config.nodes:
            raise ApiError(404, f"unknown node {node!r}")
        expect = record.generation if generation is None else generation
        why = migration_refusal(state, record, node)
        if why:
            return Outcome(OutcomeKind.REFUSED, why)
        if not self._s.nodes[node].migration_uri:
            return Outcome(
                OutcomeKind.REFUSED, f"{node} has no migration_uri in the config: it takes none"
            )
        command = MigrateGuest(guest, node, expect, f"api@{self._config.node}", time.time())
        log.warning("admin: migrate %s (generation %d) to %s", guest, expect, node)
        return await consensus.propose(command, self._s.commit_timeout_s)

    async def confirm_fenced(self, node: str, by: str) -> Outcome:
        """An admin verified that the failed `node` is off: propose `ConfirmFenced` for the
        failure epoch this agent's view shows, so a confirmation of an older failure (the node
        came back and failed again since) is refused by `apply`, not applied to the new one."""
        consensus = self._serving()
        if node not in self._config.nodes:
            raise ApiError(404, f"unknown node {node!r}")
        record = consensus.view().state.node(node)
        if record.state is not NodeState.FAILED:
            return Outcome(
                OutcomeKind.REFUSED,
                f"{node} is {record.state.value}, not failed: only a node the cluster declared "
                "failed can be confirmed fenced",
            )
        who = f"{by} via api@{self._config.node}" if by else f"api@{self._config.node}"
        command = ConfirmFenced(node, record.failure_epoch, who, time.time())
        log.warning(
            "admin: %s confirms that %s (failure %d) is powered off",
            who,
            node,
            record.failure_epoch,
        )
        return await consensus.propose(command, self._s.commit_timeout_s)
