"""The imperative shell: one asyncio loop around the AgentCore.

Each pass: observe the local hypervisor, read the consensus view, `core.tick`, then hand the
proposals to consensus and the actions to the adapters as tasks with timeouts. Results go back
into the core and wake the loop. Events (libvirt lifecycle, Raft apply, finished tasks) only
wake the loop; the loop is level-triggered, so a lost event costs at most one tick.

A pass that decided something logs one line with its reason; idle passes are silent, or the
log would carry twenty identical lines a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
import uuid
from collections.abc import Mapping
from typing import Any

from haagent.agent import (
    Action,
    ActionResult,
    AgentCore,
    DestroyDomain,
    LocalView,
    Proposal,
    RunFence,
    StartGuest,
    StopGuest,
)
from haagent.api import ApiError, build_app, serve
from haagent.commands import ConfirmFenced, SetDesired, SetMaintenance
from haagent.config import Config
from haagent.consensus import JournalDamagedError, RaftConsensus
from haagent.fencing.levels import AgentFencer
from haagent.fencing.sdnotify import SystemdNotifier
from haagent.fencing.watchdog import (
    DeviceWatchdog,
    FileWatchdog,
    WatchdogError,
    open_watchdog,
)
from haagent.metrics import AgentMetrics
from haagent.model import DesiredState, NodeRole, NodeState
from haagent.ports import (
    ConsensusView,
    DomainObservation,
    FenceOutcome,
    Fencer,
    Hypervisor,
    HypervisorError,
    Outcome,
    OutcomeKind,
    Watchdog,
)
from haagent.resources.libvirt_guests import LibvirtHypervisor
from haagent.status import build_status
from haagent.whatif import tolerated_failures, what_if

log = logging.getLogger("haagent")

PET_INTERVAL_S = 0.2
OBSERVE_INTERVAL_S = 1.0
TOLERANCE_INTERVAL_S = 5.0


class StartupError(RuntimeError):
    """The agent cannot start safely (an operating problem, not a bug)."""


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.agent_settings()
        self.pid = os.getpid()
        self.incarnation = f"{self.pid}-{uuid.uuid4().hex[:8]}"
        self.started_at = time.monotonic()
        self.core = AgentCore(self.settings, self.incarnation, self.started_at)
        self.core.set_wall_offset(time.time() - time.monotonic())
        self.agent_metrics = AgentMetrics(config.node)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop_requested = False
        self._last_pass = time.monotonic()
        self._last_pet = -1.0
        self._last_notify = -1.0
        self._local: Mapping[str, DomainObservation] | None = None
        self._local_error: str | None = None
        self._observed_at = -1.0
        self._observe_due = True
        self._tolerance_at = -math.inf
        self._lease_valid = False
        self.hypervisor: Hypervisor | None = None
        self.fencer: Fencer = AgentFencer()
        self.watchdog: Watchdog | None = None
        self.notifier = SystemdNotifier.from_env()
        self.consensus: RaftConsensus | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        cfg = self.config

        def wake_threadsafe() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        if cfg.me.role is NodeRole.HYPERVISOR:
            assert cfg.libvirt_uri is not None
            hv = LibvirtHypervisor(cfg.libvirt_uri)
            await hv.open()
            hv.set_listener(self._hypervisor_event)
            self.hypervisor = hv
        # The API binds before the watchdog is armed: a taken port must end in a clear error,
        # not in an armed hardware watchdog that resets the host after this process exits.
        try:
            runner = await serve(build_app(cfg.api_token, self), cfg.api_listen)
        except OSError as exc:
            raise StartupError(f"cannot serve the API on {cfg.api_listen}: {_why(exc)}") from None
        consensus = RaftConsensus(
            cfg.node,
            {n.name: n.address for n in cfg.nodes.values()},
            cfg.secret,
            cfg.data_dir / "raft",
            cfg.timing.election_timeout_min_s,
            cfg.timing.election_timeout_max_s,
            wake=wake_threadsafe,
        )
        try:
            try:
                consensus.check_address()
            except OSError as exc:
                raise StartupError(f"cannot bind Raft on {cfg.me.address}: {_why(exc)}") from None
            try:
                consensus.check_storage()
            except JournalDamagedError as exc:
                raise StartupError(
                    f"Raft journal damaged: {exc}; to recover, wipe {cfg.data_dir / 'raft'} "
                    "and start again: this node rejoins as an empty replica (README: "
                    "Recovering a damaged journal)"
                ) from None
            except OSError as exc:
                raise StartupError(f"cannot open the Raft journal: {exc}") from None
            self._arm_watchdog()
        except StartupError:
            await runner.cleanup()
            raise
        self.consensus = consensus
        self.consensus.start()
        log.info(
            "started node=%s incarnation=%s cluster=%s api=%s",
            cfg.node,
            self.incarnation,
            cfg.cluster,
            cfg.api_listen,
        )
        self.notifier.ready()
        try:
            await self._loop()
        finally:
            await self._shutdown(runner)
        return 0

    def _arm_watchdog(self) -> None:
        cfg = self.config
        try:
            watchdog = open_watchdog(
                cfg.watchdog_device, cfg.me.watchdog_timeout_s, str(cfg.watchdog_standin)
            )
        except WatchdogError as exc:
            raise StartupError(f"watchdog: {exc}") from None
        self.watchdog = watchdog
        relies = self.settings.nodes[cfg.node].relies_on_watchdog
        armed_s = watchdog_commitment(watchdog, cfg.watchdog_standin_ok)
        if relies and armed_s is None:
            # The others will recover this node's guests once its watchdog "must" have reset
            # it; without a real device nothing would, so refuse rather than pretend.
            watchdog.close()
            raise StartupError(
                f"{cfg.node} is fenced by a watchdog but {cfg.watchdog_device or 'no device'} "
                "is not usable; set [local] watchdog_device, or watchdog_standin_ok = true "
                "in a lab"
            )
        if relies and armed_s is not None and armed_s != expected_watchdog_s(watchdog, cfg):
            watchdog.close()
            raise StartupError(
                f"{cfg.node} is fenced by a watchdog but {watchdog.description} cannot do "
                f"the configured watchdog_timeout_s = {cfg.me.watchdog_timeout_s:g}; "
                "configure a timeout the device supports"
            )
        self.core.set_watchdog_timeout(armed_s)

    def request_stop(self) -> None:
        """SIGTERM: leave the cluster cleanly (hand guests over), then exit."""
        if not self._stop_requested:
            log.info("stop requested: stopping guests and leaving the cluster")
            self.notifier.stopping()
            self._stop_requested = True
            self.core.begin_leave()
            self._wake.set()

    async def _shutdown(self, runner: Any) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await runner.cleanup()
        if self.consensus is not None:
            self.consensus.stop()
        nothing_runs = self._local is not None and not any(
            d.running for d in self._local.values() if d.name in self._protected_domains()
        )
        if self.watchdog is not None and nothing_runs:
            self.watchdog.close()
        if self.hypervisor is not None:
            close = getattr(self.hypervisor, "close", None)
            if close is not None:
                await close()
        log.info("stopped")

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        tick_s = min(0.05, self.settings.heartbeat_s / 2)
        leave_deadline: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick_s)
            self._wake.clear()
            step_left = await self._pass()
            if self._stop_requested:
                now = time.monotonic()
                if leave_deadline is None:
                    leave_deadline = now + self.settings.shutdown_timeout_s + 5
                if step_left:
                    log.info("left the cluster cleanly")
                    return
                if now > leave_deadline:
                    log.error("could not leave cleanly in time; exiting (the cluster will fence)")
                    return

    async def _pass(self) -> bool:
        assert self.consensus is not None
        await self._observe()
        now = time.monotonic()
        view = self.consensus.view()
        local = LocalView(self._local, self._observed_at)
        step = self.core.tick(now, view, local)
        self._last_pass = now
        self._lease_valid = step.lease_valid
        self.agent_metrics.loop_passes.inc()
        for proposal in step.proposals:
            self._spawn(self._run_proposal(proposal))
        for action in step.actions:
            self._spawn(self._run_action(action))
        if step.reason:
            log.info("pass: %s", step.reason)
        self._feed_watchdogs(now, step.pet_watchdog)
        running = None
        if self._local is not None:
            protected = self._protected_domains()
            running = sum(1 for d in self._local.values() if d.running and d.name in protected)
        self.agent_metrics.update(view, now, self.core.lease_until, running)
        self._update_tolerance(now, view)
        return step.left

    def _hypervisor_event(self) -> None:
        self._observe_due = True
        self._wake.set()

    def _update_tolerance(self, now: float, view: ConsensusView) -> None:
        """Refresh the tolerated-failures gauge every few seconds (it may try many
        combinations of failed nodes), only from a fresh view."""
        if now - self._tolerance_at < TOLERANCE_INTERVAL_S or not self.core.lease_valid(now):
            return
        self._tolerance_at = now
        tolerated, _ = tolerated_failures(view.state, self.settings.capacity_mib, self.config.nodes)
        self.agent_metrics.tolerated_failures.set(tolerated)

    async def _observe(self) -> None:
        """Refresh the view of the local hypervisor when something may have changed there (a
        lifecycle event, one of our own actions finished) and at least every
        OBSERVE_INTERVAL_S: listing every domain's metadata is one RPC per domain, too much
        for every 50 ms pass on a host with hundreds of guests."""
        if self.hypervisor is None:
            self._local, self._local_error = {}, None
            return
        now = time.monotonic()
        if not self._observe_due and now - self._observed_at < OBSERVE_INTERVAL_S:
            return
        self._observe_due = False
        self._observed_at = now
        try:
            self._local = await asyncio.wait_for(self.hypervisor.domains(), 5.0)
            self._local_error = None
        except (HypervisorError, TimeoutError) as exc:
            self._local, self._local_error = None, str(exc) or type(exc).__name__
            log.warning("cannot observe the hypervisor: %s", self._local_error)

    def _feed_watchdogs(self, now: float, pet: bool) -> None:
        if pet and self.watchdog is not None and now - self._last_pet >= PET_INTERVAL_S:
            self.watchdog.pet()
            self._last_pet = now
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now - self._last_notify >= min(interval, 1.0):
            # systemd's watchdog watches the loop itself, not the lease: a fresh loop is alive.
            self.notifier.watchdog()
            self._last_notify = now

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_proposal(self, proposal: Proposal) -> None:
        assert self.consensus is not None
        outcome = await self.consensus.propose(proposal.command, proposal.timeout_s)
        for ev in self.core.proposal_done(proposal.key, outcome, time.monotonic()):
            log.info("%s", ev)
        self._wake.set()

    async def _run_action(self, action: Action) -> None:
        try:
            result = await self._execute(action)
        except Exception as exc:  # An adapter bug must not kill the loop.
            log.exception("action %s failed unexpectedly", action.key)
            result = ActionResult(False, f"unexpected error: {exc}")
        for ev in self.core.action_done(action.key, result, time.monotonic()):
            log.info("%s", ev)
        self._observe_due = True
        self._wake.set()

    async def _execute(self, action: Action) -> ActionResult:
        s = self.settings
        if isinstance(action, RunFence):
            levels = self.config.fence_levels(action.node)
            try:
                # The fencer bounds itself; this outer deadline only guards against a bug
                # there leaving the node's fencing "in flight" forever.
                outcome = await asyncio.wait_for(
                    self.fencer.fence(action.node, levels, s.fence_timeout_s),
                    s.fence_timeout_s + 10,
                )
            except TimeoutError:
                outcome = FenceOutcome(False, f"fencer did not return in {s.fence_timeout_s}s")
            result_label = "ok" if outcome.ok else "failed"
            self.agent_metrics.fence_operations.labels(action.node, result_label).inc()
            log.warning(
                "fence %s: %s (%s)", action.node, "OK" if outcome.ok else "FAILED", outcome.detail
            )
            return ActionResult(outcome.ok, outcome.detail, outcome)
        hv = self.hypervisor
        if hv is None:
            return ActionResult(False, "no hypervisor on this node")
        try:
            if isinstance(action, StartGuest):
                xml = self.config.guest_xml(action.guest)
                await asyncio.wait_for(
                    hv.start(action.domain, xml, s.cluster, s.node, action.generation),
                    s.start_timeout_s,
                )
                log.info("started %s at generation %d", action.guest, action.generation)
            elif isinstance(action, StopGuest):
                await asyncio.wait_for(
                    hv.stop(action.domain, action.timeout_s), action.timeout_s + 10
                )
            elif isinstance(action, DestroyDomain):
                t0 = time.monotonic()
                await asyncio.wait_for(hv.destroy(action.domain), max(s.stop_grace_s, 10.0))
                took = time.monotonic() - t0
                level = logging.WARNING if took <= s.stop_grace_s else logging.ERROR
                log.log(level, "destroyed %s in %.3fs: %s", action.domain, took, action.reason)
        except (HypervisorError, TimeoutError) as exc:
            return ActionResult(False, str(exc) or "timed out")
        return ActionResult(True)

    # -- status surface --------------------------------------------------------------------

    def _protected_domains(self) -> set[str]:
        names = {spec.domain for spec in self.settings.guests}
        if self.consensus is not None:
            names |= {g.spec.domain for g in self.consensus.view().state.guests.values()}
        return names

    def _serving_consensus(self) -> RaftConsensus:
        """The consensus adapter for an API request; 503 in the moment between the API
        binding and Raft starting."""
        if self.consensus is None:
            raise ApiError(503, "the agent is starting")
        return self.consensus

    def metrics(self) -> bytes:
        return self.agent_metrics.render()

    def whatif(self, fail: list[str]) -> dict[str, Any]:
        unknown = [n for n in fail if n not in self.config.nodes]
        if unknown:
            raise ApiError(
                400,
                f"unknown node(s) {', '.join(unknown)}; "
                f"nodes: {', '.join(sorted(self.config.nodes))}",
            )
        consensus = self._serving_consensus()
        view = consensus.view()
        result = what_if(view.state, self.settings.capacity_mib, fail, self.config.nodes)
        doc = result.to_json()
        doc["view_fresh"] = self.core.lease_valid(time.monotonic())
        return doc

    async def set_desired(self, guest: str, running: bool) -> Outcome:
        consensus = self._serving_consensus()
        if guest not in consensus.view().state.guests:
            raise ApiError(404, f"unknown guest {guest!r}")
        desired = DesiredState.RUNNING if running else DesiredState.STOPPED
        command = SetDesired(guest, desired, f"api@{self.config.node}", time.time())
        log.info("admin: %s %s", "enable" if running else "disable", guest)
        return await consensus.propose(command, self.settings.commit_timeout_s)

    async def set_maintenance(self, node: str, on: bool) -> Outcome:
        consensus = self._serving_consensus()
        if node not in self.config.nodes:
            raise ApiError(404, f"unknown node {node!r}")
        command = SetMaintenance(node, on, f"api@{self.config.node}", time.time())
        log.info("admin: maintenance %s %s", "on" if on else "off", node)
        return await consensus.propose(command, self.settings.commit_timeout_s)

    async def confirm_fenced(self, node: str, by: str) -> Outcome:
        """An admin verified that the failed `node` is off: propose `ConfirmFenced` for the
        failure epoch this agent's view shows, so a confirmation of an older failure (the node
        came back and failed again since) is refused by `apply`, not applied to the new one."""
        consensus = self._serving_consensus()
        if node not in self.config.nodes:
            raise ApiError(404, f"unknown node {node!r}")
        record = consensus.view().state.node(node)
        if record.state is not NodeState.FAILED:
            return Outcome(
                OutcomeKind.REFUSED,
                f"{node} is {record.state.value}, not failed: only a node the cluster declared "
                "failed can be confirmed fenced",
            )
        who = f"{by} via api@{self.config.node}" if by else f"api@{self.config.node}"
        command = ConfirmFenced(node, record.failure_epoch, who, time.time())
        log.warning(
            "admin: %s confirms that %s (failure %d) is powered off",
            who,
            node,
            record.failure_epoch,
        )
        return await consensus.propose(command, self.settings.commit_timeout_s)

    def health(self) -> tuple[bool, str]:
        now = time.monotonic()
        age = now - self._last_pass
        if age > max(1.0, 10 * min(0.05, self.settings.heartbeat_s / 2)):
            return False, f"reconcile loop stale ({age:.2f}s since the last pass)"
        if not self.core.lease_valid(now):
            return False, "no valid lease (not in contact with a majority)"
        return True, "lease valid, loop fresh"

    async def status(self) -> dict[str, Any]:
        consensus = self._serving_consensus()
        local: Mapping[str, DomainObservation] | None = {}
        error = None
        if self.hypervisor is not None:
            # Observed now, not from the last pass: this is what an admin or a test trusts.
            try:
                local = await asyncio.wait_for(self.hypervisor.domains(), 5.0)
            except (HypervisorError, TimeoutError) as exc:
                local, error = None, str(exc) or type(exc).__name__
        now = time.monotonic()
        return build_status(
            node=self.config.node,
            cluster=self.config.cluster,
            pid=self.pid,
            incarnation=self.incarnation,
            view=consensus.view(),
            now=now,
            lease_until=self.core.lease_until,
            loop_age_s=now - self._last_pass,
            local=local,
            local_error=error,
        )


def watchdog_commitment(watchdog: Watchdog, standin_ok: bool) -> float | None:
    """The watchdog timeout this node commits for others to wait on: what a real device
    reports after arming, the stand-in's value only where it was opted into (a lab), else None
    (nobody may count on a reset)."""
    if isinstance(watchdog, DeviceWatchdog):
        return watchdog.timeout_s
    if standin_ok and isinstance(watchdog, FileWatchdog):
        return watchdog.timeout_s
    return None


def expected_watchdog_s(watchdog: Watchdog, cfg: Config) -> float:
    """What a device that honours the config reports: the request rounded up to whole
    seconds for a device (drivers take integers), the configured value for the stand-in."""
    if isinstance(watchdog, DeviceWatchdog):
        return float(max(1, math.ceil(cfg.me.watchdog_timeout_s)))
    return cfg.me.watchdog_timeout_s


def _why(exc: OSError) -> str:
    """ "Address already in use", not asyncio's wrapped sentence around it."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def run_daemon(config: Config) -> int:
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format=f"%(asctime)s {config.node} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        return asyncio.run(Daemon(config).run())
    except StartupError as exc:
        log.critical("cannot start: %s", exc)
        return 1
