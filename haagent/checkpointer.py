"""Digests of this replica's state checkpoints, computed on a thread of their own.

The apply path (pysyncobj's tick thread, which also carries every heartbeat) must not pay
O(state) for them (issue 7, "the lease loop is sacred"): it hands over the state, immutable, and
goes on. See `haagent.core.digests` for what a checkpoint is.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from haagent.core.digests import (
    CHECKPOINT_EVERY,
    KEEP_CHECKPOINTS,
    RecordDigests,
    is_checkpoint,
    state_digest,
)
from haagent.model import Checkpoint, ClusterState


class Checkpointer:
    """Digests of this replica's state at its checkpoints, computed off the apply path.

    `offer(state)` is O(1) (called by the Raft apply thread for every command); a daemon thread
    digests the checkpoint states in order. `recent()` and `latest` are safe from any thread.
    `digest` and `every` are injectable so a test can make the thread slow or wrong, or
    checkpoint more often (every replica of a cluster must use the same `every`).
    """

    def __init__(
        self,
        digest: Callable[[ClusterState, RecordDigests], str] = state_digest,
        every: int = CHECKPOINT_EVERY,
    ) -> None:
        self._digest = digest
        self._memo: RecordDigests = {}  # the thread's own: records digested at the last one
        self._every = every
        self._cond = threading.Condition()
        self._queue: list[ClusterState] = []
        self._done: OrderedDict[int, str] = OrderedDict()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def offer(self, state: ClusterState) -> None:
        """Take the state just applied; only checkpoint states are kept (a reference: states
        are immutable). More than a few waiting means the thread is behind: the oldest are
        dropped, their digests would be too old to compare anyway."""
        if not is_checkpoint(state.applied, self._every):
            return
        with self._cond:
            self._queue.append(state)
            del self._queue[:-KEEP_CHECKPOINTS]
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="haagent-checkpoints", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                state = self._queue.pop(0)
            digest = self._digest(state, self._memo)
            with self._cond:
                self._done[state.applied] = digest
                while len(self._done) > KEEP_CHECKPOINTS:
                    self._done.popitem(last=False)
                self._cond.notify_all()

    def recent(self) -> dict[int, str]:
        """index -> digest of the last few checkpoints (a copy, at most KEEP_CHECKPOINTS)."""
        with self._cond:
            return dict(self._done)

    @property
    def latest(self) -> Checkpoint | None:
        with self._cond:
            if not self._done:
                return None
            index = next(reversed(self._done))
            return Checkpoint(index, self._done[index])

    def wait_for(self, index: int, timeout_s: float) -> bool:
        """Block until the checkpoint at `index` (or a later one) is digested (tests)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: bool(self._done) and next(reversed(self._done)) >= index, timeout_s
            )

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join()
