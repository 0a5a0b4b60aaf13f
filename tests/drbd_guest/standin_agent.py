"""A stand-in for the haagent daemon's fence endpoint, run inside a test guest.

It serves the production protocol with the production `FenceServer`. Two modes:

- scripted (default): `fence-peer` answers the verdict written in VERDICT_FILE (read at each
  request, so the test can change it), `unfence-peer` answers `unfenced`;
- `--node NODE`: the production `ConsensusFenceAuthority` of node NODE on a fake consensus
  (named as one) that applies every proposal at once to a cluster state chosen by the word in
  VERDICT_FILE: `owner-running` (guest `vm` on DRBD resource r0 runs on guest1, its replicas
  on guest1 and guest2) or `owner-fenced` (guest1 was declared failed and fenced, and NODE
  was assigned `vm` and is starting it).

Every request is appended to LOG_FILE as one JSON line with the answer.

    python -m tests.drbd_guest.standin_agent SOCKET VERDICT_FILE LOG_FILE [--node NODE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from pathlib import Path

from haagent.commands import (
    AssignGuests,
    Assignment,
    Command,
    DeclareFailed,
    DefineGuest,
    FenceResult,
    GuestRunning,
    GuestStarting,
    Join,
)
from haagent.model import (
    ClusterState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    NodeRole,
    StorageKind,
)
from haagent.ports import ConsensusView, Outcome, OutcomeKind
from haagent.resources.drbd_authority import ConsensusFenceAuthority
from haagent.resources.drbd_fence import (
    FenceAnswer,
    FenceAuthority,
    FenceRequest,
    FenceServer,
    Verdict,
)
from haagent.statemachine import apply

SPEC = GuestSpec(
    "vm", "vm", 64, storage=StorageKind.DRBD, replica_nodes=("guest1", "guest2"), resource="r0"
)


def _build(state: ClusterState, *commands: Command) -> ClusterState:
    for c in commands:
        state, result = apply(state, c)
        assert result.accepted, (c, result)
    return state


def cluster_state(phase: str, node: str) -> ClusterState:
    state = _build(
        ClusterState(),
        *(Join(n, f"{n}-1", NodeRole.HYPERVISOR, True, 0.0) for n in ("guest1", "guest2", "w")),
        DefineGuest(SPEC, 0.0),
        AssignGuests((Assignment("vm", "guest1", 0),), "placed", 0.0),
        GuestStarting("vm", "guest1", 1, 0.0),
        GuestRunning("vm", "guest1", 2, 0.0),
    )
    if phase == "owner-running":
        return state
    assert phase == "owner-fenced", phase
    seq = state.node("guest1").heartbeat_seq
    state = _build(
        state,
        DeclareFailed("guest1", seq, FailureEvidence("w", seq, 2.0, "silent", 0.0)),
        FenceResult("guest1", 1, True, FenceMethod.AGENT, "off", 0.0),
    )
    gen = state.guests["vm"].generation
    return _build(
        state,
        AssignGuests((Assignment("vm", node, gen),), "recovered", 0.0),
        GuestStarting("vm", node, gen + 1, 0.0),
    )


class PhaseConsensus:
    """A fake consensus: the state of the phase named in a file, plus what was proposed."""

    def __init__(self, phase_file: Path, node: str) -> None:
        self.phase_file = phase_file
        self.node = node
        self.states: dict[str, ClusterState] = {}

    def _phase(self) -> str:
        phase = self.phase_file.read_text().strip()
        if phase not in self.states:
            self.states[phase] = cluster_state(phase, self.node)
        return phase

    def view(self) -> ConsensusView:
        return ConsensusView(state=self.states[self._phase()])

    async def propose(self, command: Command, timeout_s: float) -> Outcome:
        phase = self._phase()
        self.states[phase], result = apply(self.states[phase], command)
        kind = OutcomeKind.ACCEPTED if result.accepted else OutcomeKind.REFUSED
        return Outcome(kind, result.detail)


class FileAuthority:
    def __init__(self, verdict_file: Path) -> None:
        self.verdict_file = verdict_file

    async def ensure_peer_cannot_write(self, request: FenceRequest) -> FenceAnswer:
        verdict = Verdict(self.verdict_file.read_text().strip())
        return FenceAnswer(verdict, "stand-in agent (scripted by the test)")

    async def peer_may_write_again(self, request: FenceRequest) -> FenceAnswer:
        return FenceAnswer(Verdict.UNFENCED, "stand-in agent")


class Logged:
    def __init__(self, inner: FenceAuthority, log_file: Path) -> None:
        self.inner = inner
        self.log_file = log_file

    def _log(self, request: FenceRequest, answer: FenceAnswer) -> FenceAnswer:
        doc = {**asdict(request), "op": request.op.value, "verdict": answer.verdict.value}
        doc["detail"] = answer.detail
        with self.log_file.open("a") as f:
            f.write(json.dumps(doc, sort_keys=True) + "\n")
        return answer

    async def ensure_peer_cannot_write(self, request: FenceRequest) -> FenceAnswer:
        return self._log(request, await self.inner.ensure_peer_cannot_write(request))

    async def peer_may_write_again(self, request: FenceRequest) -> FenceAnswer:
        return self._log(request, await self.inner.peer_may_write_again(request))


async def serve(args: argparse.Namespace) -> None:
    inner: FenceAuthority
    if args.node:
        consensus = PhaseConsensus(Path(args.verdict_file), args.node)
        inner = ConsensusFenceAuthority(args.node, consensus, 5.0, lambda: 0.0)
    else:
        inner = FileAuthority(Path(args.verdict_file))
    server = FenceServer(args.socket, Logged(inner, Path(args.log_file)))
    await server.start()
    print("STANDIN READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("socket")
    p.add_argument("verdict_file")
    p.add_argument("log_file")
    p.add_argument("--node")
    asyncio.run(serve(p.parse_args()))
