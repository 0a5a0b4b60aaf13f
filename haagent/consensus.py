"""The consensus adapter: one replicated state machine on pysyncobj.

Hardening (DESIGN.md "pysyncobj: facts measured here" and lab/PYSYNCOBJ.md):
- `password` is always set (pysyncobj unpickles whatever reaches its port; with a password the
  link is encrypted and authenticated) and `bindAddress` is always this node's own address
  (the default binds every interface).
- `leaderFallbackTimeout` is lowered to the election timeout (default 30 s: an isolated leader
  would believe it leads for half a minute), `connectionRetryTime` is 0.2 s (a restarted node
  otherwise waits up to 5 s to be re-dialled and disrupts the cluster meanwhile), batching is
  off (~1 ms commits), except that heartbeats, and the news of their commits, wait for the
  leader's next append-entries and ride on it (vendored `appendLazily`, `commitNoticeDelay`):
  a heartbeat needs to commit within its lease's margin, not now, and one append then carries
  every node's (issue 7: most of an idle leader's messages and fsyncs). The tick thread
  sleeps until its next Raft timer is due (election deadline, append-entries period; a
  vendored patch) or a socket or a submitted command wakes it, at most `AUTO_TICK_PERIOD_S`:
  timers keep their precision (50 ms ticks caused split votes with short timeouts) without 100
  idle wake-ups a second. An idle leader sends append-entries every `append_entries_period()`
  (balanced 125 ms, robust 0.2 s) and, while only heartbeats await commit, reads its peers
  once per period instead of waking for each acknowledgement (`QUIET_LEADER_AFTER_S`).
- The vendored pysyncobj runs pre-vote elections and catches lagging replicas up without
  bouncing (haagent/vendor/pysyncobj/PATCHES.md): a lossy link or a starved CPU on one node
  does not depose the leader. `view()` reports elections and replica lag for status/metrics.
- Every proposal has a timeout; a timeout, a leader change or a lost callback is an UNKNOWN
  outcome, never a failure we act on. Commands are conditional, so a late apply is harmless.
- Commands are versioned JSON (`haagent.commands`). Snapshots use our own JSON serializer, so
  our state is never pickled; the journal holds the JSON command bytes.
- A committed command this agent cannot decode (written by a newer agent), or a snapshot that
  fails to load (the vendored pysyncobj then applies nothing more: `dumpLoadError`), freezes
  the local state machine and is reported as `incompatible`: applying it differently from the
  other nodes would split the state. The node then holds no lease, stops its guests and leaves
  Raft (`leave`, asked by the daemon), so it is declared failed and fenced (issue 8 item 6).
- Every `CHECKPOINT_EVERY` commands the state is digested on a thread of its own
  (`haagent.checkpointer.Checkpointer`; the apply path only hands over the immutable state), and
  `view().checkpoints` feeds the heartbeats and the divergence check.
- The Raft port is bounded against hostile peers (patched transport, see `RAFT_PORT_LIMITS` and
  haagent/vendor/pysyncobj/PATCHES.md): frame sizes, read budget per tick, a handshake deadline,
  a cap on unauthenticated connections, no utility commands, no read-only nodes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from haagent.checkpointer import Checkpointer
from haagent.codec import from_json, to_json
from haagent.commands import Command, CommandError, Heartbeat, Join, decode, encode
from haagent.core.digests import CHECKPOINT_EVERY
from haagent.events import EventRing
from haagent.model import ClusterState
from haagent.ports import ConsensusView, HeartbeatSeen, Outcome, OutcomeKind
from haagent.statemachine import apply
from haagent.timing import SLOW_RETRANSMIT_SAFE_LEASE_S
from haagent.vendor.pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from haagent.vendor.pysyncobj.journal import FileJournal, JournalCorrupt

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1

AUTO_TICK_PERIOD_S = 0.25
"""Longest sleep of the Raft tick thread. Its timers (election deadline, append-entries
period), every socket and every submitted command end the sleep earlier, so this only bounds
the housekeeping that has no timer of its own (reconnecting to a peer, log compaction)."""


def append_entries_period(election_min_s: float) -> float:
    """How often an idle leader sends (empty) append-entries to each follower.

    New entries and the commits of commands other than heartbeats are sent at once (batching is
    off); heartbeats and their commits ride on these appends (`appendLazily`,
    `commit_notice_delay`), so a heartbeat's proposer may hear its outcome up to two periods
    later: the lease's margin pays for that, which is why the period is not longer (at 182 ms, a
    5-node `balanced` soak with 5 % loss and both cores saturated had leases lapse in 10 min, 3
    lease-loss samples and 14 guests destroyed; at 125 ms none). Otherwise the period keeps
    followers from starting an election and tells them the leader is alive. Just under a third
    of the minimum election timeout (pysyncobj requires raftMinTimeout > 3 x
    appendEntriesPeriod): a follower that misses three appends in a row only sends a pre-vote,
    which its peers refuse while they hear from the leader (leader stickiness), so a spurious
    timeout costs one round of messages, not the leader. Each period costs every follower an
    encrypted round trip: with a fifth of the timeout (0.08 s with the balanced profile) idle
    appends were a third of a 3-node leader's sends. At most 0.2 s.
    """
    return min(0.2, election_min_s / 3.2)


def append_min_interval(nodes: int, election_min_s: float) -> float:
    """Least time between two append-entries a leader sends for new entries or a commit
    advance (vendored patch `appendEntriesMinInterval`).

    With batching off, every heartbeat of every node used to go to every follower in a message
    of its own, and its commit in another: the leader's traffic grew with nodes x nodes (at 22
    nodes and one heartbeat a second, ~1,900 messages a second). Entries that arrive within
    this interval of the last send leave together, so each follower gets at most
    1 / interval of them a second. 5 ms per node, at most 0.1 s and half the idle period: a
    3-node cluster's commits wait at most 15 ms; a 22-node one's 0.1 s, twice per heartbeat
    (the append, then the commit notice), against a lease that tolerates 2 s.
    """
    return min(0.005 * nodes, 0.1, append_entries_period(election_min_s) / 2)


def commit_notice_delay(election_min_s: float) -> float:
    """How long a leader may hold the news that heartbeats committed (vendored patch
    `commitNoticeDelay`): one idle append-entries period.

    Every append-entries carries the commit index and each send restarts the idle period, so
    the notice of a heartbeat's commit rides on the next idle append instead of costing every
    follower a message and an acknowledgement of its own (issue 7: a third of a balanced
    leader's messages). The proposer applies its heartbeat, and so extends its lease, up to one
    period later (balanced 125 ms, robust 0.2 s; the lease counts from the send, so it is not
    shortened). Any other command (DeclareFailed, FenceResult, AssignGuests ...) asks for its
    commit to be announced at once (`markCommitUrgent`), so failover steps do not wait.
    """
    return append_entries_period(election_min_s)


QUIET_LEADER_AFTER_S = 5.0
"""How long after appending an entry that does not ride on appends (anything but a heartbeat,
its own or forwarded) a leader keeps reading its peers at once (vendored `quietLeaderAfter`).
Otherwise, while only heartbeats await commit, it reads them once per tick, right before the
tick that uses what they sent: an idle 3-node leader's acknowledgements and forwarded
heartbeats then cost it no wake-up of their own (16 + 5 of its 28 a second, `balanced`).
Followers hear of commits as before; the leader applies heartbeats up to one append period
later, which is why silence counts from its append (`RaftConsensus._on_apply`). The window
covers a failover's steps (declaration, fence result, assignment, the new owner's
`GuestStarting` forwarded to the leader): none waits for a tick."""


def rides_on_appends(command: Command) -> bool:
    """Whether `command` waits for the leader's next append_entries and its commit for the
    one after (vendored `appendLazily`, `commitNoticeDelay`) instead of both leaving at once:
    heartbeats only. A heartbeat's commit is needed within its lease's margin, not now, and
    decides nothing by itself; every other command is a step someone is waiting for."""
    return isinstance(command, Heartbeat)


MAX_COMMAND_BYTES = 60 * 2**10
"""Largest encoded command this agent proposes; a bigger one is refused before it is proposed.
The largest real one is an `AssignGuests` of at most 256 assignments
(haagent.core.scheduling.MAX_ASSIGNMENTS_PER_COMMAND): 47 KB with 63-character names. The
limit stays below pysyncobj's
appendEntriesBatchSizeBytes (64 KiB) with room for the entry's pickle wrapping (~60 bytes), so
no entry is ever sent through pysyncobj's path for single entries of 64 KiB or more: that path
labels its last chunk by the unpickled length and the follower then unpickles a truncated
buffer (EOFError in its tick thread; seen here with 1 MiB commands). It also bounds frames:
an entry too large for `RAFT_PORT_LIMITS["maxFrameSize"]` could never be replicated."""

RAFT_PORT_LIMITS: dict[str, Any] = {
    # Largest frame from an authenticated peer (larger: the connection is closed; also the
    # limit after decompression). The largest message is an append_entries batch: entries up
    # to 64 KiB (appendEntriesBatchSizeBytes) plus one entry of up to MAX_COMMAND_BYTES,
    # pickled (138 KB), zlib, Fernet (base64, x4/3): 184 KB even if nothing compressed
    # (measured; 56 KB as it compresses). Snapshot chunks (logCompactionBatchSize, 64 KiB) are
    # 104 KB. 1 MiB leaves a factor of 5.
    "maxFrameSize": 2**20,
    # Before the peer authenticated: the key exchange (228 bytes) and the node address (248).
    "handshakeFrameSize": 4 * 2**10,
    # Read per connection per poll event, interleaved with the Raft timers and the other
    # connections: a full frame in one event, a flood of them spread over ticks.
    "readBudget": 256 * 2**10,
    # A peer completes the handshake in ~2 round trips plus 2 ticks (< 50 ms on a LAN).
    "handshakeTimeout": 1.0,
    # >= the 63 peers of a 64-node cluster that may all dial one node at a cold start.
    "maxUnauthenticatedConnections": 64,
    "acceptBatch": 16,
    "listenBacklog": 64,
    # haagent has fixed membership and no read-only nodes: no utility commands at all
    # (status/add/remove/set_version/transfer), and only configured peers may connect.
    "utilityCommands": (),
    "allowReadonlyNodes": False,
}

RAFT_RETRANSMIT: dict[str, Any] = {
    # One lost segment on a Raft connection must cost milliseconds, not Linux's 200 ms minimum
    # RTO doubling per loss (200+400+800 ms after three: a lease-sized stall at 5 % loss).
    # The RTO still follows the measured RTT, so a slow link keeps the RTO it needs.
    "quickRetransmit": True,
    "tcpRtoMinUs": 20_000,
    # Our ACK must not wait longer than the peer's short RTO (else it retransmits for nothing).
    "tcpDelackMaxUs": 10_000,
}


# A system-wide minimum RTO at most this long (sysctl net.ipv4.tcp_rto_min_us, Linux 6.11+)
# serves as well as the per-socket one.
SHORT_RTO_MIN_US = 50_000
RTO_MIN_SYSCTL = Path("/proc/sys/net/ipv4/tcp_rto_min_us")


def retransmit_gap(sysctl: Path = RTO_MIN_SYSCTL) -> str | None:
    """Why Raft's connections cannot get a short minimum RTO here (None: they can), from this
    kernel: the per-socket option (Linux 6.15+) or else the system-wide minimum (`sysctl`).

    Without either a lost segment waits Linux's 200 ms minimum RTO, doubling per loss (three
    losses of one segment: 1.4 s), which a lease under 3 s may not outlive on a lossy link.
    """
    from haagent.vendor.pysyncobj.tcp_connection import TCP_RTO_MIN_US

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US, RAFT_RETRANSMIT["tcpRtoMinUs"])
            return None
        except OSError as exc:
            refused = exc.strerror or str(exc)
    try:
        system_us: int | None = int(sysctl.read_text().strip())
    except (OSError, ValueError):
        system_us = None  # before Linux 6.11: the 200 ms default, or a route's rto_min
    return rto_min_gap(os.uname().release, refused, system_us)


def rto_min_gap(release: str, refused: str, system_us: int | None) -> str | None:
    """`retransmit_gap` once the kernel refused the per-socket option (`refused`, why): None
    if the system-wide minimum RTO (`system_us`, None if unknown) is short enough anyway. A
    route's `rto_min` is not detected."""
    if system_us is not None and system_us <= SHORT_RTO_MIN_US:
        return None
    minimum = f"{system_us} us" if system_us is not None else "the default 200 ms"
    return (
        f"this kernel ({release}) has no per-socket TCP_RTO_MIN_US (Linux 6.15+: {refused}) "
        f"and its minimum RTO is {minimum}"
    )


_FAIL_NAMES = {
    FAIL_REASON.QUEUE_FULL: "queue full",
    FAIL_REASON.MISSING_LEADER: "no leader",
    FAIL_REASON.DISCARDED: "discarded",
    FAIL_REASON.NOT_LEADER: "not leader",
    FAIL_REASON.LEADER_CHANGED: "leader changed",
    FAIL_REASON.REQUEST_DENIED: "request denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "unknown outcome",
}


class JournalDamagedError(Exception):
    """The Raft journal is damaged beyond a torn tail. Nothing is guessed: the node must be
    wiped and rejoin (README, "Recovering a damaged journal")."""


class _ReplicatedLog(SyncObj):
    """The pysyncobj object. Its only replicated method carries our JSON command bytes."""

    def __init__(
        self,
        self_address: str,
        other_addresses: list[str],
        conf: SyncObjConf,
        on_apply: Callable[[bytes, float | None], tuple[tuple[str, str], bool]],
    ) -> None:
        """`on_apply` gets the command and when this node appended it as leader (None if it
        did not); it returns the outcome and whether followers must hear of the commit at once
        (anything but a heartbeat) or may wait for the next append (`commitNoticeDelay`).
        """
        self._haagent_on_apply = on_apply
        super().__init__(self_address, other_addresses, conf)

    @replicated
    def submit(self, payload: bytes) -> tuple[str, str]:
        result, urgent = self._haagent_on_apply(payload, self.appendedAtOfApplying)
        if urgent:
            self.markCommitUrgent()
        return result


class RaftConsensus:
    """`Consensus` port on pysyncobj. Thread model: pysyncobj's tick thread applies commands
    and calls back; the asyncio side reads `view()` and awaits `propose()`."""

    def __init__(
        self,
        node: str,
        addresses: Mapping[str, str],
        secret: str,
        data_dir: Path,
        election_timeout_min_s: float = 0.3,
        election_timeout_max_s: float = 0.6,
        wake: Callable[[], None] | None = None,
        persist: bool = True,
        checkpoint_every: int = CHECKPOINT_EVERY,
        lease_s: float | None = None,
        quiet_leader_after_s: float = QUIET_LEADER_AFTER_S,
    ) -> None:
        self.node = node
        # The configured lease, only to say how much a kernel without quick retransmission
        # matters (None: unknown, so it is warned about).
        self._lease_s = lease_s
        self._quiet_leader_after_s = quiet_leader_after_s
        self._addresses = dict(addresses)
        self._names = {addr: name for name, addr in addresses.items()}
        self._secret = secret
        self._data_dir = data_dir
        self._election = (election_timeout_min_s, election_timeout_max_s)
        self._wake = wake or (lambda: None)
        self._persist = persist
        self._lock = threading.Lock()
        self._state = ClusterState()
        self._heartbeats: dict[str, HeartbeatSeen] = {}
        self._incompatible: str | None = None
        self._sync: _ReplicatedLog | None = None
        self._left: _ReplicatedLog | None = None  # asked to stop by `leave`, not joined yet
        self._too_large_logged: dict[str, float] = {}
        # Recent transitions for GET /v1/events (haagent.events: why a ring and not state).
        self.events = EventRing()
        self.checkpoints = Checkpointer(every=checkpoint_every)

    # -- lifecycle -------------------------------------------------------------------------

    def check_address(self) -> None:
        """Raise OSError if this node's Raft address cannot be bound now. pysyncobj itself
        retries a failed bind every second forever, without a word: a taken port would leave
        the agent running, silent and never part of the cluster."""
        host, _, port = self._addresses[self.node].rpartition(":")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pysyncobj binds
            sock.bind((host.strip("[]"), int(port)))

    @property
    def journal_path(self) -> Path:
        return self._data_dir / "raft.journal"

    def check_storage(self) -> None:
        """Open the journal once and close it: a torn tail is truncated (and logged) now, and
        anything worse raises JournalDamagedError, so the daemon can refuse to start before it
        arms the watchdog instead of crash-looping (and resetting its host) later."""
        if not self._persist:
            return
        try:
            _durable_mkdir(self._data_dir)
            FileJournal(str(self.journal_path))._destroy()
        except JournalCorrupt as exc:
            raise JournalDamagedError(str(exc)) from None

    def start(self) -> None:
        """Bind the Raft port and start the tick thread. Replays the journal if present."""
        min_s, max_s = self._election
        gap, lease = retransmit_gap(), self._lease_s
        if gap is not None and lease is not None and lease >= SLOW_RETRANSMIT_SAFE_LEASE_S:
            log.info("Raft may retransmit slowly: %s; the %ss lease tolerates it", gap, lease)
        elif gap is not None:
            log.warning(
                "Raft may retransmit slowly: %s; a lease under 3 s needs sysctl "
                "net.ipv4.tcp_rto_min_us=20000 (Linux 6.11+) or `rto_min 20ms` on the route "
                'towards the peers, or [timing] profile = "robust"',
                gap,
            )
        kwargs: dict[str, Any] = {}
        if self._persist:
            _durable_mkdir(self._data_dir)
            kwargs.update(
                journalFile=str(self.journal_path),
                fullDumpFile=str(self._data_dir / "raft.snapshot.json"),
                serializer=self._write_snapshot,
                deserializer=self._read_snapshot,
            )
        me = self._addresses[self.node]
        conf = SyncObjConf(
            password=self._secret,
            bindAddress=me,
            raftMinTimeout=min_s,
            raftMaxTimeout=max_s,
            appendEntriesPeriod=append_entries_period(min_s),
            appendEntriesMinInterval=append_min_interval(len(self._addresses), min_s),
            commitNoticeDelay=commit_notice_delay(min_s),
            appendLazily=True,
            quietLeaderAfter=self._quiet_leader_after_s,
            autoTickPeriod=AUTO_TICK_PERIOD_S,
            appendEntriesUseBatch=False,
            connectionRetryTime=0.2,
            connectionTimeout=max(max_s * 2, 1.0),
            leaderFallbackTimeout=min_s,
            commandsWaitLeader=True,
            dynamicMembershipChange=False,
            logCompactionMinEntries=5000,
            logCompactionMinTime=300,
            onStateChanged=lambda old, new: self._wake(),
            **RAFT_PORT_LIMITS,
            **RAFT_RETRANSMIT,
            **kwargs,
        )
        others = [addr for name, addr in sorted(self._addresses.items()) if name != self.node]
        self._sync = _ReplicatedLog(me, others, conf, self._on_apply)

    def stop(self) -> None:
        """Stop Raft and wait until its thread is gone: after this returns the replica no
        longer votes or acknowledges anything (pysyncobj's plain destroy() only asks)."""
        for sync in (self._sync, self._left):
            if sync is not None:
                sync.destroy_synchronous()
        self._sync = self._left = None
        self.checkpoints.stop()

    def leave(self, reason: str) -> None:
        """Take this replica out of the cluster for good (this process): it stops voting,
        acknowledging and leading, without blocking the caller (the tick thread finishes its
        tick and closes its connections). For a replica or config the cluster does not share
        (issue 8 item 6): a diverged leader would otherwise keep the leadership while holding
        no lease, and nobody would declare anything failed. `view()` keeps reporting the
        state as last applied, and `incompatible` names the reason."""
        sync = self._sync
        if sync is None:
            return
        with self._lock:
            if self._incompatible is None:
                self._incompatible = reason
        log.critical("leaving the Raft cluster: %s", reason)
        self._sync, self._left = None, sync
        sync.destroy()

    @property
    def running(self) -> bool:
        """The replica takes part in Raft (started, not stopped, not left)."""
        return self._sync is not None

    # -- the replicated state machine (runs in pysyncobj's tick thread) ---------------------

    def _on_apply(self, payload: bytes, appended_at: float | None) -> tuple[tuple[str, str], bool]:
        """Apply one committed command: its outcome, and whether followers must hear of its
        commit at once (anything but a heartbeat, see `commit_notice_delay`).

        A heartbeat is seen (`HeartbeatSeen.at`) when this node appended it as leader, else
        now: either follows its send, which the sender's lease counts from. The append time
        keeps a quiet leader (`QUIET_LEADER_AFTER_S`), which learns of lazy commits up to one
        append period late, from counting a silence from that later moment."""
        if self._incompatible is not None:
            return ("incompatible", self._incompatible), True
        try:
            command = decode(payload)
        except CommandError as exc:
            with self._lock:
                self._incompatible = str(exc)
            log.critical("cannot apply a committed command, local state frozen: %s", exc)
            self._wake()
            return ("incompatible", str(exc)), True
        with self._lock:
            new_state, result = apply(self._state, command)
            self._state = new_state
            if result.accepted and isinstance(command, Heartbeat | Join):
                seq = new_state.node(command.node).heartbeat_seq
                # One clock for both: the vendored append stamp is time.monotonic too.
                at = time.monotonic() if appended_at is None else appended_at
                self._heartbeats[command.node] = HeartbeatSeen(seq, at)
        self.events.record(new_state.applied, command, result.accepted)
        self.checkpoints.offer(new_state)  # O(1): the digest is taken on its own thread
        # A heartbeat decides nothing by itself (silence is measured from `HeartbeatSeen.at`,
        # and the proposer learns its own outcome from the proposal): no wake-up for it, or
        # every agent would run a pass per heartbeat of every node.
        urgent = not rides_on_appends(command)
        if urgent:
            self._wake()
        return ("accepted" if result.accepted else "refused", result.detail), urgent

    def _write_snapshot(self, file_name: str, data: Any) -> None:
        """pysyncobj's snapshot hook (tick thread, so consistent with the applied state)."""
        entry_1, entry_0, cluster = data
        with self._lock:
            state_json = to_json(self._state)
        doc = {
            "format": SNAPSHOT_FORMAT,
            "state": state_json,
            "entries": [_entry_to_json(entry_1), _entry_to_json(entry_0)],
            "cluster": sorted(str(getattr(n, "address", n)) for n in cluster),
        }
        with open(file_name, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())

    def _read_snapshot(self, file_name: str) -> tuple[Any, Any, Any]:
        """pysyncobj's snapshot loading hook. Any failure freezes this replica: the vendored
        pysyncobj then applies nothing more (`dumpLoadError`) and `view()` reports the node
        incompatible, instead of applying the journal to a state it does not follow."""
        try:
            with open(file_name) as f:
                doc = json.load(f)
            if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"unsupported snapshot format {_format_of(doc)!r}")
            state = from_json(ClusterState, doc["state"], "state")
            entry_1, entry_0 = (_entry_from_json(e) for e in doc["entries"])
            cluster = list(doc["cluster"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = f"snapshot {file_name} failed to load: {exc}"
            with self._lock:
                if self._incompatible is None:
                    self._incompatible = reason
            self._wake()
            raise ValueError(reason) from None
        with self._lock:
            self._state = state
        return entry_1, entry_0, cluster

    # -- the Consensus port ----------------------------------------------------------------

    def committed_state(self) -> ClusterState:
        """The state this replica applied last. Safe from any thread (the executor's checks
        right before a hypervisor call run in libvirt's worker threads)."""
        with self._lock:
            return self._state

    def view(self) -> ConsensusView:
        sync = self._sync
        load_error = sync.dumpLoadError if sync is not None else None
        with self._lock:
            if load_error is not None and self._incompatible is None:
                self._incompatible = f"snapshot failed to load: {load_error}"
            state, heartbeats, incompatible = (
                self._state,
                dict(self._heartbeats),
                self._incompatible,
            )
        checkpoints = self.checkpoints.recent()
        if sync is None:
            return ConsensusView(
                state=state,
                heartbeats=heartbeats,
                incompatible=incompatible,
                checkpoints=checkpoints,
            )
        leader_node = sync._getLeader()
        leader = None
        if leader_node is not None:
            address = getattr(leader_node, "address", str(leader_node))
            leader = self._names.get(address, address)
        stats = sync.electionStats
        commit_index = sync.raftCommitIndex
        return ConsensusView(
            state=state,
            leader=leader,
            is_leader=sync._isLeader(),
            term=sync.raftCurrentTerm,
            has_quorum=bool(sync.hasQuorum),
            heartbeats=heartbeats,
            commit_index=commit_index,
            incompatible=incompatible,
            last_applied=sync.raftLastApplied,
            leader_commit_index=max(commit_index, sync.leaderCommitIndex or 0),
            pre_votes=stats["pre_votes"],
            elections=stats["elections"],
            pre_votes_refused=stats["pre_votes_refused"],
            storage_error=sync.getStorageError(),
            checkpoints=checkpoints,
        )

    async def propose(self, command: Command, timeout_s: float) -> Outcome:
        sync = self._sync
        if sync is None:
            return Outcome(OutcomeKind.UNKNOWN, "consensus stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def settle(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        def callback(result: Any, error: int) -> None:
            # Runs in pysyncobj's tick thread.
            if error == FAIL_REASON.SUCCESS and isinstance(result, tuple) and len(result) == 2:
                kind = {"accepted": OutcomeKind.ACCEPTED, "refused": OutcomeKind.REFUSED}.get(
                    result[0], OutcomeKind.UNKNOWN
                )
                outcome = Outcome(kind, str(result[1]))
            else:
                outcome = Outcome(OutcomeKind.UNKNOWN, _FAIL_NAMES.get(error, f"error {error}"))
            loop.call_soon_threadsafe(settle, outcome)

        payload = encode(command)
        if len(payload) > MAX_COMMAND_BYTES:
            now = time.monotonic()
            if now - self._too_large_logged.get(command.type_name, -3600.0) >= 60.0:
                self._too_large_logged[command.type_name] = now  # once a minute per type
                log.error(
                    "not proposing a %s of %d bytes (limit %d): it could not be replicated",
                    command.type_name,
                    len(payload),
                    MAX_COMMAND_BYTES,
                )
            return Outcome(OutcomeKind.REFUSED, f"command of {len(payload)} bytes is too large")
        sync.submit(payload, callback=callback, lazy=rides_on_appends(command))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return Outcome(OutcomeKind.UNKNOWN, f"no answer within {timeout_s}s")


def _durable_mkdir(path: Path) -> None:
    """mkdir -p whose new directories survive a power loss: each parent is fsynced after a
    directory is created in it (a journal fsynced inside a directory whose own entry was
    never fsynced can vanish with it)."""
    missing = []
    p = path.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fd = os.open(d.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _format_of(doc: Any) -> Any:
    return doc.get("format") if isinstance(doc, dict) else type(doc).__name__


def _entry_to_json(entry: Any) -> list[Any]:
    command, idx, term = entry
    return [base64.b64encode(bytes(command)).decode(), int(idx), int(term)]


def _entry_from_json(data: Any) -> tuple[bytes, int, int]:
    command, idx, term = data
    return base64.b64decode(command), int(idx), int(term)
