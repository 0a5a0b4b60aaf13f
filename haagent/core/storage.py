"""Storage gates: data before compute (DESIGN rules 5 and 6).

Raft ownership says which node may run a guest; the guest's storage has its own say on whether
its data may be used here now. Each storage kind answers through one protocol, asked by the
guest reconciliation at fixed points of a pass:

  may_start      before a start: is the data here usable at all? `None` yes (possibly after
                 `before_start`), else why not and whether this node should give up on it
  before_start   right before the start: prepare the storage (e.g. promote a replica, commit
                 a missing raid1 leg stale); True once it is ready, False while its
                 preparation runs (the start waits a pass)
  start_legs     the raid1 legs the start attaches (empty for other kinds)
  while_running  every pass the guest runs here with a lease: keep what the cluster knows
                 about the data current (e.g. a peer replica fell behind)
  after_stop     every pass, for this host's storage: release what no guest running or about
                 to start here needs any more (e.g. demote a Primary replica)

Implementations: `SharedStorage` (every allowed host sees the same disks: nothing to gate; the
second gate is QEMU's image locking / virtlockd), `DrbdStorage` (haagent.core.drbd) and
`Raid1Storage` (haagent.core.raid1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from haagent.core.decisions import LocalView, StartLeg
from haagent.core.inflight import Outbox
from haagent.model import ClusterState, GuestRecord

# Is the guest meant to run (or about to start) here? Storage it uses must not be released.
WantedHere = Callable[[GuestRecord], bool]


@dataclass(frozen=True)
class StartBlocked:
    why: str
    give_up: bool  # True: this node can never start it from this storage (it moves on)


class StorageGate(Protocol):
    def may_start(
        self, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> StartBlocked | None: ...

    def before_start(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> bool: ...

    def start_legs(self, state: ClusterState, guest: GuestRecord) -> tuple[StartLeg, ...]: ...

    def while_running(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> None: ...

    def after_stop(
        self, out: Outbox, state: ClusterState, local: LocalView, wanted_here: WantedHere
    ) -> None: ...


class SharedStorage:
    """Disks every allowed host sees: ownership is the only gate the core keeps."""

    def may_start(
        self, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> StartBlocked | None:
        return None

    def before_start(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> bool:
        return True

    def start_legs(self, state: ClusterState, guest: GuestRecord) -> tuple[StartLeg, ...]:
        return ()

    def while_running(
        self, out: Outbox, state: ClusterState, guest: GuestRecord, local: LocalView
    ) -> None:
        return None

    def after_stop(
        self, out: Outbox, state: ClusterState, local: LocalView, wanted_here: WantedHere
    ) -> None:
        return None
