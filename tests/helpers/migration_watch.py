"""Watch one domain on two libvirt hosts at a fixed period, for "never runs twice" checks.

`DomainWatch(uris, domain)` samples the domain's state on every host every `period_s` (100 ms)
from a thread with its own libvirt connections, and keeps every sample. A host whose libvirtd
is gone reads as DOWN and is reconnected on a later sample (a restarted libvirtd). Stop it on
the event loop that owns libvirt's event implementation (the adapter registers one), so that
its connections are closed while that loop still runs.

States are strings: "running/<reason>", "paused/<reason>", "shutoff/<reason>", ... (reason is
libvirt's number for that state), "absent" (not defined) or "down" (libvirtd unreachable).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import libvirt

__all__ = ["DomainWatch", "Sample"]

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
}


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    states: tuple[str, ...]  # one per host, in the order of `uris`

    def running(self) -> list[int]:
        """Indexes of the hosts on which the domain runs unpaused."""
        return [i for i, state in enumerate(self.states) if state.startswith("running")]


class DomainWatch:
    def __init__(self, uris: list[str], domain: str, period_s: float = 0.1) -> None:
        self.uris = uris
        self.domain = domain
        self.period_s = period_s
        self.samples: list[Sample] = []
        self._conns: list[libvirt.virConnect | None] = [None] * len(uris)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="domain-watch", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> DomainWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and close the connections (blocking: call it via asyncio.to_thread)."""
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError("domain watch did not stop")

    def latest(self) -> Sample | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def wait_for(self, host: int, prefix: str | tuple[str, ...], timeout_s: float) -> Sample:
        """Block until a sample taken from now on shows host `host` (index) in a state that
        starts with `prefix` (or one of them); returns that sample. AssertionError after
        `timeout_s`."""
        since = time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                fresh = [s for s in self.samples if s.at >= since]
            for sample in fresh:
                if sample.states[host].startswith(prefix):
                    return sample
            time.sleep(self.period_s / 2)
        raise AssertionError(
            f"host {host} never showed {prefix!r} in {timeout_s} s; last: {self.latest()}"
        )

    def both_running(self) -> list[Sample]:
        """Every sample in which the domain ran unpaused on more than one host."""
        with self._lock:
            return [s for s in self.samples if len(s.running()) > 1]

    def transitions(self, since: float) -> list[str]:
        """The distinct consecutive states, with times relative to `since`, for reports."""
        out: list[str] = []
        last: tuple[str, ...] | None = None
        with self._lock:
            samples = list(self.samples)
        for sample in samples:
            if sample.states != last:
                out.append(f"{sample.at - since:+.2f}s {' | '.join(sample.states)}")
                last = sample.states
        return out

    def _run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                states = tuple(self._state(i) for i in range(len(self.uris)))
                with self._lock:
                    self.samples.append(Sample(at=time.monotonic(), states=states))
                next_at += self.period_s
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            for conn in self._conns:
                if conn is not None:
                    with contextlib.suppress(libvirt.libvirtError):
                        conn.close()

    def _state(self, i: int) -> str:
        conn = self._conns[i]
        try:
            if conn is None:
                conn = self._conns[i] = libvirt.open(self.uris[i])
            state, reason = conn.lookupByName(self.domain).state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return "absent"
            if conn is not None and _dead(conn):
                # Closed, not just dropped: its socket watch and keepalive timer live in the
                # event implementation until libvirt frees the connection.
                self._conns[i] = None
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
            return "down"
        return f"{_STATES.get(state, str(state))}/{reason}"


def _dead(conn: libvirt.virConnect) -> bool:
    try:
        return conn.isAlive() != 1
    except libvirt.libvirtError:
        return True
