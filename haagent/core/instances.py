"""The instance tracker: what this agent process knows about the protected instances on its
host, one record per domain, beyond what the hypervisor shows right now.

An instance is a domain on this host at one generation. Every fact is stored with the
generation it is about, so a fact about an older instance never answers a question about a
newer one. Facts come only from results this process received or observations it made; an
action whose result has not come back is still in flight (`InFlight`), so its outcome stays
unknown here until the next pass can look again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Instance:
    # (generation, when this agent process first saw it running)
    seen_running: tuple[int, float] | None = None
    # (generation, when this agent's start call returned), until it is seen running
    start_returned: tuple[int, float] | None = None
    start_failed: tuple[int, str] | None = None  # (generation, why), reported by a later pass
    stopped_here: int | None = None  # generation this agent stopped or destroyed itself
    start_waits: str | None = None  # why its start waits on storage, as last reported
    # (generation, when its start's outcome came back unknown): a late create() may still
    # complete, so it is neither started again nor reported stopped until resolved.
    start_unknown: tuple[int, float] | None = None
    # (generation, when this process first saw it run with a generation ahead of its state)
    seen_ahead: tuple[int, float] | None = None


@dataclass(frozen=True)
class Absence:
    """Why a guest the state says runs here is not running."""

    crashed: bool  # only a crash counts against the guest
    why: str
    fresh_count: bool = False  # it crashed after a stable run: count this failure afresh


class InstanceTracker:
    def __init__(self) -> None:
        self._by_domain: dict[str, Instance] = {}

    def _record(self, domain: str) -> Instance:
        return self._by_domain.setdefault(domain, Instance())

    def _peek(self, domain: str) -> Instance:
        return self._by_domain.get(domain) or Instance()

    # -- facts from action results --------------------------------------------------------

    def start_returned(self, domain: str, generation: int, at: float) -> None:
        self._record(domain).start_returned = (generation, at)

    def start_failed(self, domain: str, generation: int, why: str) -> None:
        self._record(domain).start_failed = (generation, why)

    def start_unknown(self, domain: str, generation: int, at: float) -> None:
        self._record(domain).start_unknown = (generation, at)

    def unknown_start_since(self, domain: str, generation: int) -> float | None:
        """When this generation's start came back with an unknown outcome, if it did."""
        unknown = self._peek(domain).start_unknown
        return unknown[1] if unknown is not None and unknown[0] == generation else None

    def resolve_unknown_start(self, domain: str) -> None:
        if domain in self._by_domain:
            self._by_domain[domain].start_unknown = None

    def first_seen_ahead(self, domain: str, generation: int, now: float) -> float:
        """When this process first saw `domain` run at `generation`, a generation its state
        did not know yet (the first sighting of that generation counts)."""
        known = self._peek(domain).seen_ahead
        if known is None or known[0] != generation:
            self._record(domain).seen_ahead = (generation, now)
            return now
        return known[1]

    def stopped_here(self, domain: str, generation: int) -> None:
        self._record(domain).stopped_here = generation

    def stopped_here_at(self, domain: str, generation: int) -> bool:
        """Did this process itself stop or destroy this generation?"""
        return self._peek(domain).stopped_here == generation

    # -- facts from observation -----------------------------------------------------------

    def saw_running(self, domain: str, generation: int, now: float) -> None:
        """Remember when this process first saw this generation run (a later sighting of the
        same instance keeps the first time)."""
        known = self._peek(domain).seen_running
        if known is None or known[0] != generation:
            self._record(domain).seen_running = (generation, now)

    def forget_start(self, domain: str) -> None:
        """The start was confirmed (seen running, or reported) or is about to be retried."""
        if domain in self._by_domain:
            self._by_domain[domain].start_returned = None

    # -- questions --------------------------------------------------------------------------

    def failed_start(self, domain: str, generation: int) -> str | None:
        """Why this generation's start failed here, if it did."""
        failed = self._peek(domain).start_failed
        return failed[1] if failed is not None and failed[0] == generation else None

    def start_returned_at(self, domain: str, generation: int) -> float | None:
        """When this generation's start returned successfully (not yet seen running)."""
        started = self._peek(domain).start_returned
        return started[1] if started is not None and started[0] == generation else None

    def absence(self, domain: str, generation: int, now: float, reset_s: float) -> Absence:
        """Classify a missing instance. Only one this agent saw running and did not stop
        itself has crashed: its own stops and self-fencing destroys are not the guest's fault,
        and a new agent process cannot tell a crash from its host having restarted."""
        instance = self._peek(domain)
        since = instance.seen_running
        if instance.stopped_here == generation:
            return Absence(False, "stopped by this node")
        if since is None or since[0] != generation:
            return Absence(False, "not running when this agent started (host restart?)")
        # Measured on this agent's monotonic clock from when it first saw the instance run:
        # a crash weeks after the last one starts a fresh count.
        ran_for = now - since[1]
        if ran_for >= reset_s:
            return Absence(
                True, f"crashed after running {ran_for:.0f} s (a fresh failure count)", True
            )
        return Absence(True, "crashed")

    # -- storage waits, reported once per reason -------------------------------------------

    def wait_changed(self, domain: str, why: str) -> bool:
        """Record why the start waits; True when that is news (worth an event)."""
        if self._peek(domain).start_waits == why:
            return False
        self._record(domain).start_waits = why
        return True

    def stop_waiting(self, domain: str) -> None:
        if domain in self._by_domain:
            self._by_domain[domain].start_waits = None
