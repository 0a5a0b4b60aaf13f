"""The imperative shell: one asyncio loop around the AgentCore — the lease path.

A pass reads the consensus view and the observer's latest local view (neither waits), calls
`core.tick`, hands proposals to consensus and actions to the executor as tasks, pets the
watchdogs and publishes a telemetry snapshot. That is all that runs on the loop per pass; its
cost does not grow with nodes x guests beyond what the core itself needs. Metrics, the status
document, what-if and the tolerated-failures count are computed off the loop (telemetry,
admin), and observing the hypervisor is the observer's task.

Passes are driven by events and deadlines, not by a fixed tick:
- events: a committed command other than a heartbeat, a finished proposal (except a heartbeat
  that only extends a valid lease), a finished action, a new observation, an admin request
  for a stop;
- deadlines: this node's next heartbeat as the core schedules it (a retry it brings forward
  after a heartbeat lost with a dead leader included), the end of its lease, the next
  watchdog pet and sd_notify, and (on the leader) each peer's failure-detection deadline;
- a fallback of `MAX_IDLE_S` for the core's internal timers this shell cannot see (fence
  back-off, start-up grace, cold-start wait). While this node is joined the heartbeat
  deadline already brings a pass every `heartbeat_s`.
A deadline that falls due while a pass runs gets a pass right after it, and a renewal that
brings no pass re-aims the waiting timer at the lease's new end. Each pass records its
duration and its lag (start minus the earliest time it was due).

A pass that decided something logs one line with its reason; idle passes are silent.
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
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from haagent.agent import Action, ActionResult, AgentCore, Proposal, RunFence
from haagent.api import build_app, serve
from haagent.commands import Heartbeat
from haagent.config import Config
from haagent.consensus import JournalDamagedError, RaftConsensus
from haagent.daemon.admin import AdminService
from haagent.daemon.admin_verbs import AdminVerbService
from haagent.daemon.authority import ActAuthority
from haagent.daemon.drbd import DrbdService
from haagent.daemon.executor import ActionExecutor
from haagent.daemon.malloc import tune_malloc
from haagent.daemon.mirrors import UnknownMirrors
from haagent.daemon.netwatch import NetworkObserver, needed_here
from haagent.daemon.observer import Observer
from haagent.daemon.offload import Offload
from haagent.daemon.surface import Surface
from haagent.daemon.telemetry import Snapshot, Telemetry
from haagent.daemon.watchdogs import (
    StartupError,
    WatchdogKeeper,
    expected_watchdog_s,
    pet_interval,
    pet_now,
    watchdog_commitment,
)
from haagent.fencing.levels import AgentFencer
from haagent.fencing.sdnotify import SystemdNotifier
from haagent.model import ClusterState, NodeRole, StorageKind
from haagent.ports import Fencer, Hypervisor, Mirrors

__all__ = [
    "Daemon",
    "StartupError",
    "expected_watchdog_s",
    "pet_interval",
    "run_daemon",
    "watchdog_commitment",
]

log = logging.getLogger("haagent")

MAX_IDLE_S = 0.5


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.agent_settings()
        self.pid = os.getpid()
        self.incarnation = f"{self.pid}-{uuid.uuid4().hex[:8]}"
        self.started_at = time.monotonic()
        self.core = AgentCore(self.settings, self.incarnation, self.started_at)
        self.core.set_wall_offset(time.time() - time.monotonic())
        self.telemetry = Telemetry(config.node, Offload())
        self.telemetry.set_config(self.settings)
        self._watchdog_required = frozenset(
            n for n, ns in self.settings.nodes.items() if ns.relies_on_watchdog
        )
        self.hypervisor: Hypervisor | None = None
        self.fencer: Fencer = AgentFencer()
        self.notifier = SystemdNotifier.from_env()
        self.consensus: RaftConsensus | None = None
        self.admin = AdminService(
            config, self.settings, self.telemetry, lambda: self.consensus, self.core.lease_valid
        )
        self.admin_verbs = AdminVerbService(config, self.settings, lambda: self.consensus)
        self.observer = Observer(None, self.wake, on_error=self.telemetry.agent.observation_failed)
        self.authority = ActAuthority(config.node, self.core.lease, self._committed_state)
        self.watchdogs = WatchdogKeeper(config, self.core, self.authority)
        self.drbd: DrbdService | None = None  # where a DRBD replica lives (daemon/drbd.py)
        # Raid1 guests' legs: libvirt (resources/mirrors.py) on a hypervisor with raid1 guests,
        # else the stand-in that knows nothing (daemon/mirrors.py).
        self.mirrors: Mirrors = UnknownMirrors()
        self._raid1_domains = {
            spec.domain: spec.name
            for spec in self.settings.guests
            if spec.storage is StorageKind.RAID1
        }
        self.executor = self._executor(None)
        self.networks = NetworkObserver(
            needed_here(config.node, self.settings.guests),
            self.wake,
            libvirt_uri=config.libvirt_uri,
        )
        self._protected = frozenset(spec.domain for spec in self.settings.guests)
        self._wake = asyncio.Event()
        self._due_at: float | None = None  # earliest time a pass was asked for since the last
        self._last_pass_at: float | None = None  # start of the last pass (None: none yet)
        self._timer: asyncio.TimerHandle | None = None  # the next deadline's, while waiting
        self._thread_wake_pending = False
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_requested = False
        self._last_notify = -math.inf

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._loop_ref = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        cfg = self.config
        if cfg.me.role is NodeRole.HYPERVISOR:
            assert cfg.libvirt_uri is not None
            from haagent.resources.libvirt_guests import LibvirtHypervisor  # only hypervisors

            hv = LibvirtHypervisor(cfg.libvirt_uri)
            await hv.open()
            self.hypervisor = hv
            # Only the cluster decides where a protected guest starts: a fenced host that
            # boots must not start one on its own (libvirt autostart) before its agent runs.
            cleared = await hv.clear_autostart(self._protected)
            if cleared:
                log.warning("turned libvirt autostart off for %s", ", ".join(cleared))
            if cfg.drbd_resources():
                self.drbd = DrbdService(
                    cfg.node, cfg.drbd_resources(), cfg.drbd_fence_socket, self.wake
                )
            if self._raid1_domains:
                from haagent.resources.mirrors import LibvirtMirrors  # only raid1 hosts

                # A guest's domain may have another name than the guest (for_guests maps it).
                self.mirrors = LibvirtMirrors.for_guests(hv, self.settings.guests)
            replicas = self.drbd.replicas if self.drbd else None
            self.observer = Observer(
                hv,
                self.wake,
                on_error=self.telemetry.agent.observation_failed,
                replicas=replicas,
                mirrors=self.mirrors,
                raid1_domains=self._raid1_domains,
            )
            hv.set_listener(self.observer.request)
            self.executor = self._executor(hv)
        # The API binds before the watchdog is armed: a taken port must end in a clear error,
        # not in an armed hardware watchdog that resets the host after this process exits.
        try:
            runner = await serve(
                build_app(cfg.api_access, Surface(self)), cfg.api_listen, cfg.api_access
            )
        except OSError as exc:
            raise StartupError(f"cannot serve the API on {cfg.api_listen}: {_why(exc)}") from None
        consensus = self.make_consensus()
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
            if self.drbd is not None:
                # Bound before the watchdog is armed, like the API.
                try:
                    await self.drbd.serve(consensus, self.settings.commit_timeout_s)
                except OSError as exc:
                    raise StartupError(
                        f"cannot serve the DRBD fence socket {cfg.drbd_fence_socket}: {_why(exc)}"
                    ) from None
            self.watchdogs.arm()
        except StartupError:
            if self.drbd is not None:
                await self.drbd.close()
            await runner.cleanup()
            raise
        self.consensus = consensus
        consensus.start()
        self.observer.start()
        if self.drbd is not None:
            self.drbd.start()
        if cfg.me.role is NodeRole.HYPERVISOR:
            self.networks.start()
        log.info(
            "started node=%s incarnation=%s cluster=%s api=%s",
            cfg.node,
            self.incarnation,
            cfg.cluster,
            cfg.api_listen,
        )
        act, timing = cfg.timing_note()
        (log.warning if act else log.info)("%s", timing)
        self.notifier.ready()
        try:
            await self._loop()
        finally:
            await self._shutdown(runner)
        return 0

    def _executor(self, hv: Hypervisor | None) -> ActionExecutor:
        drbd = self.drbd
        return ActionExecutor(
            self.config,
            self.settings,
            hv,
            self.fencer,
            self.telemetry,
            self.authority,
            drbd.replicas if drbd is not None else None,
            drbd.command_timeout_s if drbd is not None else 0.0,
            self.mirrors if hv is not None else None,
        )

    def _committed_state(self) -> ClusterState:
        """The replica's state right now, from any thread (before Raft runs: an empty one,
        which authorises nothing)."""
        consensus = self.consensus
        return ClusterState() if consensus is None else consensus.committed_state()

    def make_consensus(self) -> RaftConsensus:
        """The Raft adapter over every configured node (a test may narrow the peers)."""
        cfg = self.config
        return RaftConsensus(
            cfg.node,
            {n.name: n.address for n in cfg.nodes.values()},
            cfg.secret,
            cfg.data_dir / "raft",
            cfg.timing.election_timeout_min_s,
            cfg.timing.election_timeout_max_s,
            wake=self.wake_threadsafe,
            lease_s=cfg.timing.lease_s,
        )

    def request_stop(self) -> None:
        """SIGTERM: leave the cluster cleanly (hand guests over), then exit. On a frozen node
        (`haagent node freeze`) the core keeps the guests running and releases the watchdog
        instead, and the agent exits at once (an agent restart or upgrade)."""
        if not self._stop_requested:
            log.info("stop requested: stopping guests and leaving the cluster (unless frozen)")
            self.notifier.stopping()
            self._stop_requested = True
            self.core.begin_leave()
            self.wake()

    async def _shutdown(self, runner: Any) -> None:
        await self.observer.stop()
        if self.drbd is not None:
            await self.drbd.close()
        await self.networks.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await runner.cleanup()
        if self.consensus is not None:
            self.consensus.stop()
        self.telemetry.close()
        local = self.observer.view().domains
        nothing_runs = local is not None and not any(
            d.running for d in local.values() if d.name in self._protected_domains()
        )
        self.watchdogs.close_if_safe(nothing_runs)
        if self.hypervisor is not None:
            close = getattr(self.hypervisor, "close", None)
            if close is not None:
                await close()
        log.info("stopped")

    def _protected_domains(self) -> set[str]:
        names = set(self._protected)
        if self.consensus is not None:
            names |= {g.spec.domain for g in self.consensus.view().state.guests.values()}
        return names

    # -- waking ----------------------------------------------------------------------------

    def wake(self, at: float | None = None) -> None:
        """Ask for a pass (loop thread). `at`: when the need arose, for the lag."""
        at = time.monotonic() if at is None else at
        self._due_at = at if self._due_at is None else min(self._due_at, at)
        self._wake.set()

    def wake_threadsafe(self) -> None:
        """Ask for a pass from another thread (Raft's). Coalesced: one wake-up in flight."""
        loop = self._loop_ref
        if loop is None or self._thread_wake_pending:
            return
        self._thread_wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop closed while Raft was stopping
            loop.call_soon_threadsafe(self._thread_wake, time.monotonic())

    def _thread_wake(self, at: float) -> None:
        self._thread_wake_pending = False
        self.wake(at)

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        leave_deadline: float | None = None
        while True:
            self._arm_timer()
            await self._wake.wait()
            self._disarm_timer()
            self._wake.clear()
            left = self._pass()
            if self._stop_requested:
                now = time.monotonic()
                if leave_deadline is None:
                    leave_deadline = now + self.settings.shutdown_timeout_s + 5
                if left:
                    log.info("left the cluster cleanly")
                    return
                if now > leave_deadline:
                    log.error("could not leave cleanly in time; exiting (the cluster will fence)")
                    return

    def _arm_timer(self) -> None:
        """Set the timer for the next deadline, unless a pass is already asked for."""
        if self._wake.is_set():
            return
        now = time.monotonic()
        served = now if self._last_pass_at is None else self._last_pass_at
        due = self._next_deadline(now, served)
        self._timer = asyncio.get_running_loop().call_at(due, self.wake, due)

    def _disarm_timer(self) -> bool:
        """Cancel the waiting timer (a fired one: harmless); whether there was one."""
        if self._timer is None:
            return False
        self._timer.cancel()
        self._timer = None
        return True

    def _rearm_timer(self) -> None:
        """Re-aim a waiting timer after a change no pass saw (a renewal moved the lease's end:
        without this the timer still fires at the old end, a pass for nothing)."""
        if self._disarm_timer():
            self._arm_timer()

    def _next_deadline(self, now: float, served: float) -> float:
        """The earliest deadline a pass must serve (see the module docstring): the first one
        after `served`, the start of the last pass (one at or before it was that pass's to
        serve). A deadline that fell due while that pass ran is returned although it is past,
        so the timer fires at once: a pass that starts 5 ms before the heartbeat is due and
        takes 40 ms must not leave the heartbeat to the next deadline, up to `MAX_IDLE_S`
        later (it did, and at 12 agents on 2 cores that cost `balanced` leases). O(nodes) on
        the leader, O(1) elsewhere."""
        s = self.settings
        candidates = [now + MAX_IDLE_S, self.core.next_heartbeat_at, self.core.lease_until]
        pet_at = self.watchdogs.next_pet_at()
        if pet_at is not None:
            candidates.append(pet_at)
        interval = self.notifier.watchdog_interval_s
        if interval is not None:
            candidates.append(self._last_notify + min(interval, 1.0))
        snap = self.telemetry.latest
        if snap is not None and snap.view.is_leader:
            for seen in snap.view.heartbeats.values():
                for limit in (s.failure_timeout_s, s.lease_s):
                    candidates.append(seen.at + limit + 0.001)
        return min(c for c in candidates if c > served)  # now + MAX_IDLE_S always qualifies

    def _pass(self) -> bool:
        """One pass; returns True once a requested leave has committed. Never awaits."""
        assert self.consensus is not None
        started = self._last_pass_at = time.monotonic()
        due = started if self._due_at is None else self._due_at
        self._due_at = None
        self.observer.check()
        self.networks.check()
        view = self.consensus.view()
        local = replace(self.observer.view(), missing_networks=self.networks.missing())
        step = self.core.tick(started, view, local)
        if step.diverged is not None and self.consensus.running:
            # Not the cluster's replica or config: stop voting and leading (issue 8 item 6).
            self.consensus.leave(step.diverged)
        for proposal in step.proposals:
            self._spawn(self._run_proposal(proposal))
        for action in step.actions:
            self._spawn(self._run_action(action, self.executor.dispatch(action)))
        if step.reason:
            log.info("pass: %s", step.reason)
        self.watchdogs.set_released(step.release_watchdog, started)
        self._feed_watchdogs(started, step.pet_watchdog)
        self.core.arming.watchdog_armed = self.watchdogs.armed
        keeper = self.watchdogs
        pet_at = None if keeper.watchdog is None or keeper.last_pet < 0 else keeper.last_pet
        self.telemetry.publish(
            Snapshot(
                view,
                started,
                self.core.lease_until,
                local,
                self._protected,
                self._watchdog_required,
                pet_at,
                voters=len(self.settings.nodes),
                config_digest=self.core.lease.config_digest,
                disarmed_since=self.core.arming.disarmed_since(view.state),
            )
        )
        if self.admin.tolerance_due(started):
            self._spawn(self.admin.refresh_tolerance(view.state, view.commit_index))
        self.telemetry.loop.record(started, due, time.monotonic() - started)
        # A frozen node's agent exits only once its watchdog is released (an authorised
        # call still in the hypervisor holds the release back, see WatchdogKeeper).
        return step.left and (not step.release_watchdog or self.watchdogs.released)

    def _feed_watchdogs(self, now: float, pet: bool) -> None:
        self.watchdogs.feed(now, pet)
        interval = self.notifier.watchdog_interval_s
        if interval is not None and pet_now(now - self._last_notify, min(interval, 1.0)):
            # systemd's watchdog watches the loop itself, not the lease: a fresh loop is alive.
            self.notifier.watchdog()
            self._last_notify = now

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_proposal(self, proposal: Proposal) -> None:
        assert self.consensus is not None
        proposed_at = time.monotonic()
        outcome = await self.consensus.propose(proposal.command, proposal.timeout_s)
        now = time.monotonic()
        self.telemetry.agent.proposal_done(proposal.command, outcome, now - proposed_at)
        renewal = isinstance(proposal.command, Heartbeat) and self.core.lease_valid(now)
        until_before = self.core.lease_until
        events = self.core.proposal_done(proposal.key, outcome, now)
        if self.core.lease_until > until_before:
            self.telemetry.raft_events.renewed(now, until_before, self.core.lease_until)
        for ev in events:
            log.info("%s", ev)
        # A heartbeat that only extended a valid lease changes no decision: no pass for it.
        if not (renewal and outcome.accepted and not events):
            self.wake(now)
        else:
            self._rearm_timer()

    async def _run_action(self, action: Action, work: Coroutine[Any, Any, ActionResult]) -> None:
        began = time.monotonic()
        result = await work
        now = time.monotonic()
        if isinstance(action, RunFence):
            self.telemetry.agent.fence_done(result.ok, now - began)
        for ev in self.core.action_done(action.key, result, now):
            log.info("%s", ev)
        self.observer.request()
        self.wake(now)


def _why(exc: OSError) -> str:
    """ "Address already in use", not asyncio's wrapped sentence around it."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def run_daemon(config: Config) -> int:
    tune_malloc()  # before any thread starts
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
