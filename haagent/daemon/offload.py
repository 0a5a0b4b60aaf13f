"""Where the work that grows with nodes x guests runs: never on the loop.

Contract: `Offload.run(fn, *args, size=n)` runs the pure function `fn` and returns its result
without blocking the event loop.
- `size` is the cost measure of the state (nodes x guests). Small states run in one worker
  thread: no extra process for the demo's 3 nodes.
- Large states (`size > PROCESS_THRESHOLD`) run in one worker *process*. A thread would share
  the GIL with the loop and with Raft's tick thread: while it computes, every GIL hand-off
  costs up to a switch interval, and on a loaded host the thread is preempted while holding
  the GIL, so each hand-off waits for the scheduler (measured here: a 1,000-guest scrape in a
  thread let the lease run down to 0.1 s). The process starts on first use ("spawn": forking a
  process with live threads can copy held locks) and stays; its arguments are pickled (~10 ms
  for 1,000 guests), its results are small or text.
- The worker process runs at nice `WORKER_NICE` (`lower_priority`): a thread of the agent
  that wakes up (Raft's, the loop) gets a core before it. Every agent computes the
  tolerated-failures count when the cluster settles, so all of them did it at the same
  moment: at 22 agents / 110 guests sharing 2 cores the 22 workers, at the agents' priority,
  took the cores from the Raft threads; leases lapsed, guests were destroyed and restarted,
  the state settled again 5 s later and the next round began (156 lease losses in an idle
  minute, every ~10 s). Not SCHED_IDLE: on a host whose guests use every core that would
  starve scrapes and what-ifs for good; niced, they are slower, and a count that hits its time
  budget says so (a lower bound).
- One job at a time per executor: a flood of requests queues, it does not multiply workers.
- `fn` must be a module-level function (picklable) that reads no clock it was not given,
  except for its own time budget.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

T = TypeVar("T")

PROCESS_THRESHOLD = 2000  # nodes x guests; 22 x 110 is above, the 3-node demo far below


WORKER_NICE = 10  # a tenth of a normal task's CPU share when both want a core


def lower_priority() -> None:
    """Lower the calling process (the worker) to WORKER_NICE, unless it already runs lower.
    Lowering one's own priority needs no privilege."""
    current = os.nice(0)
    if current < WORKER_NICE:
        os.nice(WORKER_NICE - current)


class Offload:
    def __init__(self, process_threshold: int = PROCESS_THRESHOLD) -> None:
        self._threshold = process_threshold
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haagent-offload")
        self._process: ProcessPoolExecutor | None = None

    def _executor(self, size: int) -> Executor:
        if size <= self._threshold:
            return self._thread
        if self._process is None:
            # Imported here: multiprocessing costs start-up time (a restarted agent has one
            # lease to rejoin in) and the 3-node demo never needs it.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._process = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=lower_priority,
            )
        return self._process

    async def run(self, fn: Callable[..., T], *args: Any, size: int) -> T:
        loop = asyncio.get_running_loop()
        executor = self._executor(size)
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except BrokenExecutor:
            # The worker process died (OOM killer, a signal): this request fails, the next
            # one gets a new process.
            if executor is self._process:
                self._process = None
            raise

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        if self._process is not None:
            self._process.shutdown(wait=False, cancel_futures=True)
