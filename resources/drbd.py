"""DRBD adapter: runs `drbd.sh` (the only code that runs drbd-utils) and watches `events2`.

- `run_wrapper` runs one `drbd.sh` command with a timeout and returns its exit status and
  output; it never raises for DRBD's refusals (they are data), only `DrbdUnavailableError` when
  drbd-utils are missing.
- `DrbdWatcher` keeps `drbd.sh watch RES` running for one resource, folds its lines into a
  `ResourceTracker` and calls `wake()` (the reconcile loop's wake) on every change that
  matters. When events2 dies it is restarted with a doubling back-off; until its new initial
  dump is complete the watcher is not `current` and reports no observation. Reading happens in
  the event loop through asyncio's subprocess pipes, so nothing ever blocks the loop.
- `DrbdReplicas` implements the core's `Replicas` port on top of both.

The daemon owns one `DrbdReplicas` for the resources with a replica on its node: the
observer reads `snapshot()` every pass and the executor runs promote/demote/resume-io.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from haagent.ports import ReplicaError, ReplicaObservation
from haagent.resources.drbd_events import (
    Events2Error,
    Kind,
    ResourceState,
    ResourceTracker,
    parse_line,
)

log = logging.getLogger("haagent.drbd")

WRAPPER = Path(__file__).resolve().parent / "drbd.sh"

EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69


class DrbdError(ReplicaError):
    """An expected failure of a DRBD operation: DRBD refused it, or it timed out."""


class DrbdUnavailableError(DrbdError):
    """drbd-utils are not installed (wrapper exit 69)."""


@dataclass(frozen=True)
class WrapperResult:
    returncode: int  # the wrapper's exit status; -1 when it was killed on timeout
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


async def run_wrapper(
    command: str,
    resource: str,
    timeout_s: float,
    wrapper: Sequence[str] = ("sh", str(WRAPPER)),
    env: Mapping[str, str] | None = None,
) -> WrapperResult:
    """Run `drbd.sh COMMAND RESOURCE`; kill it after `timeout_s` (returncode -1).

    Exit 64 (bad usage) is a programming error and raises ValueError; exit 69 raises
    DrbdUnavailableError; every other status is returned for the caller to judge."""
    proc = await asyncio.create_subprocess_exec(
        *wrapper,
        command,
        resource,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env else None,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        _kill_group(proc)
        out, err = await proc.communicate()
        return WrapperResult(-1, out.decode(errors="replace"), err.decode(errors="replace"))
    finally:
        if proc.returncode is None:  # cancelled
            _kill_group(proc)
            await proc.wait()
    result = WrapperResult(
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )
    if result.returncode == EXIT_USAGE:
        raise ValueError(f"drbd.sh {command} {resource}: bad usage: {result.stderr.strip()}")
    if result.returncode == EXIT_UNAVAILABLE:
        raise DrbdUnavailableError(result.stderr.strip() or "drbd-utils are not installed")
    return result


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the wrapper and what it exec'd/forked (its own session, by its pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class DrbdWatcher:
    """Keeps `drbd.sh watch RESOURCE` running and its state folded; see the module doc."""

    def __init__(
        self,
        resource: str,
        wake: Callable[[], None],
        argv: Sequence[str] | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        stable_s: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.resource = resource
        self._wake = wake
        self._argv = list(argv) if argv is not None else ["sh", str(WRAPPER), "watch", resource]
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._stable_s = stable_s
        self._env = {**os.environ, **env} if env else None
        self.tracker = ResourceTracker()
        self.restarts = 0  # how many times events2 had to be started again
        self.bad_lines = 0
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._running = False

    @property
    def pid(self) -> int | None:
        """The running events2 process (the wrapper execs drbdsetup), for logs and tests."""
        return self._proc.pid if self._proc is not None else None

    @property
    def current(self) -> bool:
        """events2 runs and its initial dump is complete: the state is fresh."""
        return self._running and self.tracker.dump_complete

    def state(self) -> ResourceState | None:
        return self.tracker.get(self.resource) if self.current else None

    def observation(self) -> ReplicaObservation | None:
        if not self.current:
            return None
        return self.tracker.observations().get(self.resource)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"drbd-watch-{self.resource}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._backoff_initial_s
        while True:
            started = loop.time()
            try:
                await self._run_once()
            except OSError as exc:
                log.error("drbd %s: cannot run events2: %s", self.resource, exc)
            ran_s = loop.time() - started
            if ran_s >= self._stable_s:
                backoff = self._backoff_initial_s
            log.warning(
                "drbd %s: events2 stopped after %.1fs (%s); restarting in %.1fs",
                self.resource,
                ran_s,
                " | ".join(self.stderr_tail) or "no message",
                backoff,
            )
            self._wake()  # the state is no longer current
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max_s)
            self.restarts += 1

    async def _run_once(self) -> None:
        self.tracker.restart()
        proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            start_new_session=True,
        )
        self._proc = proc
        self._running = True
        assert proc.stdout is not None and proc.stderr is not None
        err_task = asyncio.get_running_loop().create_task(self._drain_stderr(proc.stderr))
        try:
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    break
                self._line(raw.decode(errors="replace"))
            await proc.wait()
        finally:
            self._running = False
            if proc.returncode is None:
                _kill_group(proc)
                await proc.wait()
            err_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await err_task
            self._proc = None

    def _line(self, line: str) -> None:
        try:
            event = parse_line(line)
        except Events2Error as exc:
            self.bad_lines += 1
            log.warning("drbd %s: %s", self.resource, exc)
            return
        if event is None:
            return
        if event.kind is not Kind.END_OF_DUMP and event.resource != self.resource:
            return
        if self.tracker.apply(event) and self.tracker.dump_complete:
            self._wake()

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            self.stderr_tail.append(raw.decode(errors="replace").rstrip())


class DrbdReplicas:
    """The core's `Replicas` port for this host: one watcher per resource, drbd.sh for changes.

    `observe()` returns only resources whose events2 state is current; a resource missing from
    the answer means "not known now" (the daemon must not read it as "no such resource")."""

    def __init__(
        self,
        resources: Sequence[str],
        wake: Callable[[], None],
        timeout_s: float = 30.0,
        wrapper: Sequence[str] = ("sh", str(WRAPPER)),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._wrapper = tuple(wrapper)
        self._env = env
        self.watchers = {
            r: DrbdWatcher(r, wake, argv=[*wrapper, "watch", r], env=env) for r in resources
        }

    def start(self) -> None:
        for w in self.watchers.values():
            w.start()

    async def stop(self) -> None:
        for w in self.watchers.values():
            await w.stop()

    async def observe(self) -> Mapping[str, ReplicaObservation]:
        return self.snapshot()[0]

    def snapshot(self) -> tuple[dict[str, ReplicaObservation], frozenset[str]]:
        """(the current observations by resource, the resources whose state is not known
        now). Never waits: it reads what the watchers folded. O(resources)."""
        out: dict[str, ReplicaObservation] = {}
        unknown = set()
        for name, w in self.watchers.items():
            if not w.current:
                unknown.add(name)
                continue
            obs = w.observation()
            if obs is not None:
                out[name] = obs
        return out, frozenset(unknown)

    async def _change(self, command: str, resource: str) -> None:
        result = await run_wrapper(command, resource, self._timeout_s, self._wrapper, self._env)
        if result.returncode == -1:
            raise DrbdError(f"drbd {command} {resource}: no answer in {self._timeout_s}s")
        if not result.ok:
            why = (result.stderr or result.stdout).strip().splitlines()
            raise DrbdError(
                f"drbd {command} {resource} refused (exit {result.returncode}): "
                + (why[-1] if why else "no message")
            )

    async def promote(self, resource: str) -> None:
        await self._change("promote", resource)

    async def demote(self, resource: str) -> None:
        await self._change("demote", resource)

    async def outdate(self, resource: str) -> None:
        await self._change("outdate", resource)

    async def resume_io(self, resource: str) -> None:
        await self._change("resume-io", resource)
