"""The daemon's watchdog: when it is opened, when it is petted, when it may be disarmed.

Rules (README, "Safety model"; DESIGN rule 3; issue 8 item 5):
- Pet while the core allows it (`Step.pet_watchdog`: a valid lease, the start-up grace, or
  nothing protected running) *and* no authorised hypervisor call is still in flight past the
  lease that authorised it (haagent.core.authority): a start stuck in libvirt beyond the
  lease gets the host reset, so it cannot run next to the guest the others recovered.
- Opening a Linux watchdog device pings it. A device a predecessor left armed (it crashed or
  was killed; the guests it started may still run) is opened only once this agent holds a
  valid lease: until then the predecessor's countdown runs on, so a restart cannot push the
  host's reset past that predecessor's last lease + armed timeout, which is what the others
  wait for before they recover its guests (core.fencing). A device nobody armed (a fresh
  boot, or a clean shutdown disarmed it with nothing running) is opened at start-up.
- The timeout committed with `Join` is the one the running countdown has: a node that relies
  on its watchdog refuses to start when the device (or the countdown left running) cannot do
  the configured timeout, or when only the stand-in is there and the lab did not opt into it.
- Disarm (magic close) only on a clean shutdown with nothing protected running and no
  authorised call still in the hypervisor, or when the core says to release it
  (`Step.release_watchdog`: the cluster is disarmed, or a frozen node's agent exits cleanly),
  again with no authorised call in the hypervisor. A device that cannot be released safely
  (no magic close, nowayout on or unknown: a close would leave it counting down) stays open
  and is petted on every pass while released, so it never fires; the stand-in closes (its
  `closed` line is what a supervisor reads as released). When the release ends (re-armed),
  the device is opened again with the timeout committed for this node, and the core then
  commits `WatchdogRearmed`: only after that may the cluster count on it (core.arming).
"""

from __future__ import annotations

import logging
import math
import os

from haagent.agent import AgentCore
from haagent.config import Config
from haagent.daemon.authority import ActAuthority
from haagent.fencing.watchdog import (
    ArmedState,
    DescribedWatchdog,
    DeviceWatchdog,
    FileWatchdog,
    WatchdogError,
    armed_state,
    open_watchdog,
)
from haagent.ports import Watchdog

log = logging.getLogger("haagent")


def pet_interval(timeout_s: float) -> float:
    """How often a lease holder pets its watchdog: a fifth of the armed timeout (five chances
    before it fires), between 0.2 s and 1 s. Safety does not depend on it (a pet happens only
    while the core allows it and no authorised call is overdue, so the reset comes at most
    `timeout_s` after that ends, whatever the interval); a shorter one would only cost
    wake-ups.
    """
    return min(1.0, max(0.2, timeout_s / 5))


def pet_now(since_last_s: float, interval_s: float) -> bool:
    """Whether a pass that may pet (or notify systemd) does so: once half the interval has
    passed. The loop wakes for the full interval (`next_pet_at`), but a pass that runs anyway
    (every heartbeat period) pets early, so the pet rides on it instead of costing a wake-up
    of its own (issue 7: an idle agent's wake-ups are most of its CPU). Petting early is never
    less safe: the device fires `timeout_s` after the last pet, whenever that was."""
    return since_last_s >= interval_s / 2


class StartupError(RuntimeError):
    """The agent cannot start safely (an operating problem, not a bug)."""


class WatchdogKeeper:
    def __init__(self, config: Config, core: AgentCore, authority: ActAuthority) -> None:
        self._config = config
        self._core = core
        self._authority = authority
        self.watchdog: Watchdog | None = None
        # A watchdog a predecessor left armed, opened only once this agent holds a lease.
        self.deferred: ArmedState | None = None
        self.last_pet = -math.inf
        self._petting = False
        self._overdue_logged = False
        # Released by a disarm or a frozen exit: closed (released) or kept petted (held).
        self.released = False
        self.held: Watchdog | None = None  # a device that cannot be released, petted always

    @property
    def armed(self) -> bool:
        """A watchdog is open and counting (what `WatchdogRearmed` asserts), or the
        predecessor's countdown runs (deferred)."""
        return not self.released and (self.watchdog is not None or self.deferred is not None)

    # -- start-up --------------------------------------------------------------------------

    def arm(self) -> None:
        """Open the watchdog now, or defer the open until this agent holds a lease (see the
        module rules). Raises StartupError."""
        cfg = self._config
        relies = self._core.settings.nodes[cfg.node].relies_on_watchdog
        armed = armed_state(cfg.watchdog_device, cfg.watchdog_standin)
        if armed.armed:
            self._defer(armed, relies)
            return
        try:
            watchdog = open_watchdog(
                cfg.watchdog_device, cfg.me.watchdog_timeout_s, str(cfg.watchdog_standin)
            )
        except WatchdogError as exc:
            raise StartupError(f"watchdog: {exc}") from None
        armed_s = watchdog_commitment(watchdog, cfg.watchdog_standin_ok)
        if relies and armed_s is None:
            watchdog.close()
            raise StartupError(self._unusable())
        if relies and armed_s is not None and armed_s != expected_watchdog_s(watchdog, cfg):
            watchdog.close()
            raise StartupError(self._cannot_do(watchdog.description))
        self.watchdog = watchdog
        # Committed with the Join: whoever fences this node waits on this value.
        self._core.set_watchdog_timeout(armed_s)

    def _defer(self, armed: ArmedState, relies: bool) -> None:
        cfg = self._config
        device = cfg.watchdog_device is not None and os.path.exists(cfg.watchdog_device)
        usable = device or cfg.watchdog_standin_ok
        if relies and not usable:
            raise StartupError(self._unusable())
        expected_s = (
            float(max(1, math.ceil(cfg.me.watchdog_timeout_s)))
            if device
            else cfg.me.watchdog_timeout_s
        )
        if relies and armed.timeout_s is not None and armed.timeout_s != expected_s:
            # The countdown running now is the one the others would have to wait for.
            raise StartupError(
                self._cannot_do(f"the armed watchdog (timeout {armed.timeout_s:g} s)")
                + "; it stays armed until the host resets"
            )
        log.warning(
            "watchdog left armed (%s): not opened until this agent holds a lease (an open "
            "pings it and would extend a lost lease)",
            armed.why,
        )
        self.deferred = armed
        self._core.set_watchdog_timeout(expected_s if usable else None)

    def _open_deferred(self, now: float) -> None:
        """Open the deferred watchdog, this agent's lease being valid at `now`. A device that
        then reports another timeout than the one committed is fatal: the loop ends with it
        and the device stays armed, so the host resets."""
        assert self.deferred is not None and self._core.lease_valid(now)
        self.deferred = None
        watchdog = self._open_committed(keep_armed=True)
        log.info("watchdog re-opened holding a lease: %s", watchdog.description)

    def _open_committed(self, keep_armed: bool) -> DescribedWatchdog:
        """Open the watchdog as `self.watchdog`; it must arm the timeout committed for this
        node. Raises WatchdogError otherwise (fatal for the loop)."""
        cfg = self._config
        watchdog = open_watchdog(
            cfg.watchdog_device,
            cfg.me.watchdog_timeout_s,
            str(cfg.watchdog_standin),
            keep_armed=keep_armed,
        )
        self.watchdog = watchdog
        committed = self._core.lease.watchdog_timeout_s
        armed_s = watchdog_commitment(watchdog, cfg.watchdog_standin_ok)
        if committed is not None and armed_s != committed:
            raise WatchdogError(
                f"{watchdog.description} armed another timeout than the {committed:g} s "
                "committed for this node"
            )
        return watchdog

    def _unusable(self) -> str:
        # The others will recover this node's guests once its watchdog "must" have reset
        # it; without a real device nothing would, so refuse rather than pretend.
        cfg = self._config
        return (
            f"{cfg.node} is fenced by a watchdog but {cfg.watchdog_device or 'no device'} "
            "is not usable; set [local] watchdog_device, or watchdog_standin_ok = true "
            "in a lab"
        )

    def _cannot_do(self, what: str) -> str:
        cfg = self._config
        return (
            f"{cfg.node} is fenced by a watchdog but {what} cannot do "
            f"the configured watchdog_timeout_s = {cfg.me.watchdog_timeout_s:g}; "
            "configure a timeout the device supports"
        )

    # -- every pass ------------------------------------------------------------------------

    def feed(self, now: float, pet: bool) -> None:
        """Pet if `pet` (the core's word) and no authorised call is overdue; open a deferred
        watchdog at the first pet with a valid lease."""
        overdue = self._authority.overdue(now)
        if overdue is not None:
            if pet and not self._overdue_logged:
                self._overdue_logged = True
                log.error(
                    "not petting the watchdog: %s (generation %d) is still in the hypervisor "
                    "%.1fs after the lease that authorised it ended",
                    overdue.key,
                    overdue.generation,
                    now - overdue.lease_until,
                )
            pet = False
        else:
            self._overdue_logged = False
        self._petting = pet
        if self.held is not None and not overdue:
            self.held.pet()  # released but not closable: never let it fire
            self.last_pet = now
        if pet and self.deferred is not None and self._core.lease_valid(now):
            self._open_deferred(now)
            self.last_pet = now  # opening pinged it
        watchdog = self.watchdog
        if (
            pet
            and watchdog is not None
            and pet_now(now - self.last_pet, pet_interval(watchdog.timeout_s))
        ):
            watchdog.pet()
            self.last_pet = now

    def next_pet_at(self) -> float | None:
        """When the loop must run again to keep petting (None: no pet is due)."""
        if self._petting and self.watchdog is not None:
            return self.last_pet + pet_interval(self.watchdog.timeout_s)
        return None

    # -- disarm and frozen exit -------------------------------------------------------------

    def set_released(self, release: bool, now: float) -> None:
        """Follow the core's `release_watchdog` (every pass, before `feed`)."""
        if release and not self.released:
            self._release(now)
        elif not release and self.released:
            self._rearm(now)

    def _release(self, now: float) -> None:
        watchdog = self.watchdog
        if self._authority.in_flight():
            return  # a start may still complete: release on a later pass
        if self.deferred is not None:
            # A predecessor's countdown: opening it pings it, which is harmless while no node
            # may be declared failed; then it is released like any other.
            self._open_for_release()
            watchdog = self.watchdog
        self.released = True
        if watchdog is None:
            return
        releasable, why = releasable_watchdog(watchdog)
        if releasable:
            watchdog.close()
            self.watchdog = None
            log.warning("watchdog released (%s): the cluster is disarmed or this node frozen", why)
        else:
            self.held = watchdog
            watchdog.pet()
            self.last_pet = now
            log.warning(
                "watchdog cannot be released safely (%s): petted on every pass instead", why
            )

    def _open_for_release(self) -> None:
        cfg = self._config
        self.deferred = None
        self.watchdog = open_watchdog(
            cfg.watchdog_device, cfg.me.watchdog_timeout_s, str(cfg.watchdog_standin), True
        )

    def _rearm(self, now: float) -> None:
        """Open the watchdog again; it must arm the timeout committed for this node, else the
        loop ends with it (a fatal error, as in `_open_deferred`)."""
        self.released = False
        if self.held is not None:
            self.watchdog, self.held = self.held, None
            log.info("watchdog armed again (it was petted throughout)")
            return
        watchdog = self._open_committed(keep_armed=False)
        self.last_pet = now
        log.warning("watchdog armed again: %s", watchdog.description)

    # -- shutdown --------------------------------------------------------------------------

    def close_if_safe(self, nothing_runs: bool) -> None:
        """Disarm on a clean exit, only with nothing protected running and no authorised
        call still in the hypervisor (it could complete after the disarm)."""
        if self.watchdog is not None and nothing_runs and not self._authority.in_flight():
            self.watchdog.close()


def releasable_watchdog(watchdog: Watchdog) -> tuple[bool, str]:
    """Whether a magic close disarms `watchdog` (devices and the stand-in say; anything else
    is assumed not to)."""
    if isinstance(watchdog, (DeviceWatchdog, FileWatchdog)):
        return watchdog.releasable()
    return False, f"{type(watchdog).__name__} cannot say"


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
