"""Fencing levels: the `Fencer` port implemented with stock fence-agents executables.

A node has one or more fencing levels, tried in order (typically: its BMC first, then a
switched PDU). A level succeeds only when every device in it powered the node off AND a
separate `status` call on every device then reported OFF. Only a confirmed power-off lets the
core move the node's guests (safety rule 4, "fence before recover"); an unconfirmed one is a
failure, never a success.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from haagent.fencing.agent_runner import AgentResult, AgentRunner, PowerState
from haagent.ports import FenceDevice, FenceOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _LevelResult:
    ok: bool
    summary: str
    stopped: bool = False  # `may_act` refused: no later level may run either


class AgentFencer:
    """`Fencer` over fence-agents executables, run by an `AgentRunner`.

    `fence(node, levels, timeout_s)` contract:

    * Levels are tried in order; in a level, `off` runs on every device in order, then
      `status` runs on every device and must report OFF (exit 2). The first level that fully
      succeeds gives `FenceOutcome(ok=True, level=<1-based index>)`; a level with no devices
      never succeeds. A failing device ends its level at once: the remaining devices of that
      level could not make the level succeed any more.
    * `timeout_s` bounds the whole call: each agent call gets the time that remains, and levels
      not reached before the deadline are reported as not tried.
    * It never raises for operating errors (missing executable, timeout, bad exit status,
      unreadable output): they all give `ok=False` with a detail naming, per level, the device
      and action that failed and why. Details and logs never contain secret parameters.
    * `may_act`, when given, is asked right before every `off` call; a reason ends the
      attempt there (failed, the remaining devices and levels not tried): the core's attempt
      is no longer in flight, so the target may have rejoined since.
    * It makes exactly one attempt. Retrying a failed fence, with backoff, and escalating is
      the caller's job (the core): it owns the schedule and must never fall through to
      recovery on a failure.

    `monotonic` is injectable so that tests can pin durations; it defaults to
    `time.monotonic`.
    """

    def __init__(
        self,
        runner: AgentRunner | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runner = runner if runner is not None else AgentRunner()
        self._monotonic = monotonic

    async def fence(
        self,
        node: str,
        levels: Sequence[Sequence[FenceDevice]],
        timeout_s: float,
        *,
        may_act: Callable[[], str | None] | None = None,
    ) -> FenceOutcome:
        started = self._monotonic()
        deadline = started + timeout_s
        failures: list[str] = []
        if not levels:
            failures.append("no fencing levels configured")
        for index, devices in enumerate(levels, start=1):
            if self._monotonic() >= deadline:
                failures.append(
                    f"levels {index}..{len(levels)} not tried: the {timeout_s:g} s limit was"
                    " reached"
                )
                break
            result = await self._run_level(node, index, devices, deadline, may_act)
            if result.stopped:
                failures.append(f"level {index}: {result.summary}")
                break
            if result.ok:
                earlier = f"; earlier failures: {'; '.join(failures)}" if failures else ""
                detail = f"node {node} fenced by level {index}: {result.summary}{earlier}"
                duration_s = self._monotonic() - started
                log.info("%s (%.2f s)", detail, duration_s)
                return FenceOutcome(ok=True, detail=detail, level=index, duration_s=duration_s)
            failures.append(f"level {index}: {result.summary}")
        detail = f"node {node} not fenced: {'; '.join(failures)}"
        duration_s = self._monotonic() - started
        log.warning("%s (%.2f s)", detail, duration_s)
        return FenceOutcome(ok=False, detail=detail, level=None, duration_s=duration_s)

    async def _run_level(
        self,
        node: str,
        index: int,
        devices: Sequence[FenceDevice],
        deadline: float,
        may_act: Callable[[], str | None] | None,
    ) -> _LevelResult:
        if not devices:
            return _LevelResult(False, "no devices configured")
        done: list[str] = []
        for device in devices:
            why = may_act() if may_act is not None else None
            if why is not None:
                # The attempt is no longer the cluster's (or this node lost its lease): the
                # target may have rejoined since, so nothing more is switched off.
                log.warning("fence node %s stopped before %s off: %s", node, _name(device), why)
                return _LevelResult(False, f"stopped before {_name(device)} off: {why}", True)
            result = await self._call(node, index, device, "off", deadline)
            if not result.succeeded:
                return _LevelResult(False, _failed(device, result))
            done.append(f"{_name(device)} off in {result.duration_s:.2f} s")
        for device in devices:
            result = await self._call(node, index, device, "status", deadline)
            if result.power is not PowerState.OFF:
                return _LevelResult(False, _failed(device, result))
            done.append(f"{_name(device)} status OFF in {result.duration_s:.2f} s")
        return _LevelResult(True, ", ".join(done))

    async def _call(
        self, node: str, index: int, device: FenceDevice, action: str, deadline: float
    ) -> AgentResult:
        remaining_s = deadline - self._monotonic()
        result = await self._runner.run(device.agent, action, device.params, remaining_s)
        log.info(
            "fence node %s level %d device %s: %s %s (%.2f s)",
            node,
            index,
            _name(device),
            action,
            _verdict(result),
            result.duration_s,
        )
        return result


def _name(device: FenceDevice) -> str:
    return f"{device.name} ({device.agent})"


def _verdict(result: AgentResult) -> str:
    if result.action == "status" and result.power is not PowerState.UNKNOWN:
        return f"reported {result.power.name}"
    if result.succeeded:
        return "succeeded"
    return f"failed: {result.reason()}"


def _failed(device: FenceDevice, result: AgentResult) -> str:
    if result.action == "status" and result.power is PowerState.ON:
        return f"{_name(device)} status still reports ON after off"
    return f"{_name(device)} {result.action} failed: {result.reason()}"
