"""Hostile peers for a Raft port: what a stranger on the management network can send.

Each attack runs in its own thread for a fixed duration, owns every socket it opens and closes
all of them when it ends (also on error), and records what the target did: how many bytes it
took, and whether and how fast it closed the connection. None of them knows the cluster secret,
so nothing they send can pass pysyncobj's encryption; what is tested is whether the bytes
themselves (size, pace, count) can hurt the target.

* `oversized`: announce a 2 GiB frame, then stream zeros as fast as the target takes them.
* `slow_stream`: announce a frame, then send it at a fixed, slow rate, forever.
* `flood`: keep `count` connections open (reopening any the target closes), each sending
  a partial frame header and then nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.helpers.cluster_watch import ClusterWatch

__all__ = [
    "Attack",
    "AttackStats",
    "ClusterHarm",
    "flood",
    "harm",
    "oversized",
    "slow_stream",
]

GIB2 = 2**31 - 1  # the largest length the 4-byte signed frame header can announce
RECONNECTS_PER_S = 50  # how often a streaming attack reconnects at most
ATTACKER_NICE = 10  # below the agents, not so low that the attack (and its clock) starves


@dataclass
class AttackStats:
    name: str
    connections: int = 0  # connections opened
    refused: int = 0  # connect() failed (refused, timed out)
    closed_by_target: int = 0  # connections the target closed or reset
    bytes_sent: int = 0
    close_after_s: list[float] = field(default_factory=list)  # per closed connection
    error: str = ""

    def summary(self) -> str:
        closes = sorted(self.close_after_s)
        median = closes[len(closes) // 2] if closes else None
        med = f"{median:.3f}s" if median is not None else "-"
        return (
            f"{self.name}: {self.connections} connections, {self.refused} refused, "
            f"{self.closed_by_target} closed by the target (median after {med}), "
            f"{self.bytes_sent} bytes sent{', error: ' + self.error if self.error else ''}"
        )


class Attack:
    """A running attack; `join()` waits for its end and returns its stats."""

    def __init__(self, name: str, target: tuple[str, int], duration_s: float) -> None:
        self.stats = AttackStats(name)
        self.target = target
        self.deadline = time.monotonic() + duration_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, daemon=True)

    def start(self) -> Attack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float = 30.0) -> AttackStats:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"attack {self.stats.name} did not end"
        return self.stats

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def _guarded(self) -> None:
        # The attacker stands for another host: on a shared test machine its threads must not
        # take CPU from the agents they attack (Linux: a thread id sets only that thread).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ATTACKER_NICE)
        try:
            self.run()
        except Exception as exc:  # recorded for the test to show; the thread must end
            self.stats.error = f"{type(exc).__name__}: {exc}"

    def run(self) -> None:
        raise NotImplementedError

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small send buffer: what the target reads is the same, but the kernel does not copy
        # megabytes per connection into buffers the target closes unread (on a 2-core test
        # machine that copying alone competes with the agents for CPU).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.settimeout(1.0)
        try:
            sock.connect(self.target)
        except OSError:
            sock.close()
            self.stats.refused += 1
            return None
        self.stats.connections += 1
        return sock

    def _send_until_closed(
        self, sock: socket.socket, header: bytes, rate_bps: float | None
    ) -> None:
        """Send `header`, then zeros (at `rate_bps`, or as fast as the target reads) until
        the target closes the connection or the attack ends."""
        opened = time.monotonic()
        chunk = bytes(65536 if rate_bps is None else max(1, int(rate_bps / 100)))
        payload = header
        sent_at = opened
        sock.settimeout(0.2)
        while self._running():
            try:
                n = sock.send(payload)
            except TimeoutError:
                # The target stopped reading (its buffer is full): it may be stalled or it
                # may have closed; a recv tells the two apart.
                if self._closed(sock):
                    break
                continue
            except OSError:
                self._record_close(opened)
                return
            self.stats.bytes_sent += n
            payload = payload[n:] or chunk
            if rate_bps is not None:
                sent_at += n / rate_bps
                pause = sent_at - time.monotonic()
                if pause > 0:
                    self._stop.wait(pause)
                if self._closed(sock):
                    break
        else:
            return
        self._record_close(opened)

    @staticmethod
    def _closed(sock: socket.socket) -> bool:
        """Has the target closed `sock`? (non-blocking peek)."""
        try:
            sock.setblocking(False)
            try:
                data = sock.recv(4096, socket.MSG_PEEK)
            finally:
                sock.settimeout(0.2)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if data:
            # The target answered something (it never should without the secret); drain it.
            with contextlib.suppress(OSError):
                sock.recv(len(data))
            return False
        return True

    def _record_close(self, opened: float) -> None:
        self.stats.closed_by_target += 1
        self.stats.close_after_s.append(time.monotonic() - opened)


class _Stream(Attack):
    def __init__(
        self,
        name: str,
        target: tuple[str, int],
        duration_s: float,
        announce: int,
        rate_bps: float | None,
    ) -> None:
        super().__init__(name, target, duration_s)
        self.header = struct.pack("<i", announce)
        self.rate_bps = rate_bps

    def run(self) -> None:
        # Reconnect after every close, up to RECONNECTS_PER_S times a second: a stranger keeps
        # trying for the whole duration (without a pause this thread alone would eat a core
        # of a 2-core test machine, which tests the machine, not the transport).
        while self._running():
            started = time.monotonic()
            sock = self._connect()
            if sock is not None:
                try:
                    self._send_until_closed(sock, self.header, self.rate_bps)
                finally:
                    sock.close()
            self._stop.wait(max(0.0, started + 1 / RECONNECTS_PER_S - time.monotonic()))


def oversized(target: tuple[str, int], duration_s: float) -> Attack:
    """Announce a 2 GiB frame, then stream zeros as fast as the target reads them."""
    return _Stream("oversized frame", target, duration_s, GIB2, None).start()


def slow_stream(
    target: tuple[str, int], duration_s: float, rate_bps: float, announce: int = GIB2
) -> Attack:
    """Announce a frame of `announce` bytes, then send zeros at `rate_bps`, forever."""
    name = f"slow stream ({rate_bps:g} B/s, announces {announce} B)"
    return _Stream(name, target, duration_s, announce, rate_bps).start()


class _Flood(Attack):
    def __init__(self, target: tuple[str, int], duration_s: float, count: int) -> None:
        super().__init__(f"flood of {count} connections", target, duration_s)
        self.count = count

    def run(self) -> None:
        # Each connection sends the first two bytes of a frame header, then waits.
        socks: dict[socket.socket, float] = {}
        try:
            while self._running():
                while len(socks) < self.count and self._running():
                    sock = self._connect()
                    if sock is None:
                        break
                    with contextlib.suppress(OSError):
                        sock.send(b"\x10\x00")
                        self.stats.bytes_sent += 2
                    socks[sock] = time.monotonic()
                for sock, opened in list(socks.items()):
                    if self._closed(sock):
                        self._record_close(opened)
                        sock.close()
                        del socks[sock]
                self._stop.wait(0.02)
        finally:
            for sock in socks:
                sock.close()


def flood(target: tuple[str, int], duration_s: float, count: int) -> Attack:
    """Keep `count` connections open to the target for `duration_s`."""
    return _Flood(target, duration_s, count).start()


# --- what the cluster did meanwhile ------------------------------------------------------------


@dataclass
class ClusterHarm:
    """What a ClusterWatch saw between two instants (monotonic), per node."""

    lease_losses: dict[str, int]  # answers with quorum False after a True (per node)
    lease_false_samples: dict[str, int]  # answers with quorum False (per node)
    unanswered: dict[str, int]  # status requests that got no answer (per node)
    longest_silence_s: dict[str, float]  # longest gap between two answers (per node)
    guest_stops: list[str]  # a guest that ran on a node vanished from it, or moved
    failed_nodes: list[str]  # any view showing a node failed or fenced
    terms: list[int]  # Raft terms seen in the answers
    heartbeats: dict[str, int]  # heartbeats of each node committed meanwhile (any view)

    def lost_anything(self) -> bool:
        return bool(
            any(self.lease_losses.values())
            or any(self.lease_false_samples.values())
            or self.guest_stops
            or self.failed_nodes
        )

    def summary(self) -> str:
        return (
            f"lease losses {self.lease_losses}, samples without lease "
            f"{self.lease_false_samples}, unanswered {self.unanswered}, longest silence "
            f"{ {n: round(s, 2) for n, s in self.longest_silence_s.items()} }, guest stops "
            f"{len(self.guest_stops)} {self.guest_stops[:5]}, failed nodes {self.failed_nodes}, "
            f"terms {sorted(set(self.terms))}, heartbeats committed {self.heartbeats}"
        )


def harm(watch: ClusterWatch, since: float, until: float) -> ClusterHarm:
    losses: dict[str, int] = {}
    false_samples: dict[str, int] = {}
    unanswered: dict[str, int] = {}
    silence: dict[str, float] = {}
    stops: list[str] = []
    failed: set[str] = set()
    terms: list[int] = []
    first_seq: dict[str, int] = {}
    last_seq: dict[str, int] = {}
    for node in watch.nodes:
        obs = [o for o in watch.observations(node) if since <= o.t0 <= until]
        unanswered[node] = sum(1 for o in obs if not o.answered)
        answers = [o for o in obs if o.doc is not None]
        losses[node] = false_samples[node] = 0
        previous_quorum: bool | None = None
        previous_local: dict[str, int] | None = None
        last_t = since
        longest = 0.0
        for o in answers:
            doc = o.doc
            assert doc is not None
            longest = max(longest, o.t1 - last_t)
            last_t = o.t1
            quorum = bool(doc["quorum"])
            if not quorum:
                false_samples[node] += 1
                if previous_quorum:
                    losses[node] += 1
            previous_quorum = quorum
            local = {g: rec.get("generation") for g, rec in (o.local or {}).items()}
            if previous_local is not None:
                for guest, generation in previous_local.items():
                    if local.get(guest) != generation:
                        stops.append(f"{watch.rel(o.t0)} {guest} gen {generation} left {node}")
            if o.local is not None:
                previous_local = local
            for name, rec in doc["nodes"].items():
                if rec.get("state") in ("failed", "fenced"):
                    failed.add(f"{name} ({rec['state']} in {node}'s view)")
            terms.append(int(doc["term"]))
            for name, rec in doc["nodes"].items():
                seq = int(rec["heartbeat_seq"])
                first_seq[name] = min(first_seq.get(name, seq), seq)
                last_seq[name] = max(last_seq.get(name, seq), seq)
        silence[node] = max(longest, until - last_t if answers else until - since)
    return ClusterHarm(
        lease_losses=losses,
        lease_false_samples=false_samples,
        unanswered=unanswered,
        longest_silence_s=silence,
        guest_stops=stops,
        failed_nodes=sorted(failed),
        terms=terms,
        heartbeats={n: last_seq[n] - first_seq[n] for n in sorted(last_seq)},
    )
