"""ConsensusFenceAuthority: what the agent answers DRBD's fence-peer handler, decided on the
real state machine behind a fake consensus (named as one: it applies at once, or never)."""

from __future__ import annotations

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
from haagent.resources.drbd_fence import FenceRequest, Op, Verdict
from haagent.statemachine import apply
from tests.helpers.core_views import build

SPEC = GuestSpec(
    "db", "db", 256, storage=StorageKind.DRBD, replica_nodes=("n1", "n2"), resource="r0"
)


class FakeConsensus:
    """A fake consensus: `majority` False makes every proposal time out (unknown)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.majority = True
        self.proposed: list[Command] = []

    def view(self) -> ConsensusView:
        return ConsensusView(state=self.state)

    async def propose(self, command: Command, timeout_s: float) -> Outcome:
        self.proposed.append(command)
        if not self.majority:
            return Outcome(OutcomeKind.UNKNOWN, f"no commit in {timeout_s}s")
        self.state, result = apply(self.state, command)
        kind = OutcomeKind.ACCEPTED if result.accepted else OutcomeKind.REFUSED
        return Outcome(kind, result.detail)


def running_on(node: str) -> ClusterState:
    return build(
        *(Join(n, f"{n}-inc", NodeRole.HYPERVISOR, True, 0.0) for n in ("n1", "n2", "n3")),
        DefineGuest(SPEC, 0.0),
        AssignGuests((Assignment("db", node, 0),), "placed", 0.0),
        GuestStarting("db", node, 1, 0.0),
        GuestRunning("db", node, 2, 0.0),
    )


def authority(node: str, consensus: FakeConsensus) -> ConsensusFenceAuthority:
    return ConsensusFenceAuthority(node, consensus, 2.0, lambda: 100.0)


def fence(resource: str = "r0", peer: str = "n2") -> FenceRequest:
    return FenceRequest(Op.FENCE_PEER, resource, peer, "10.0.0.2")


async def test_the_owner_commits_the_peer_outdated() -> None:
    consensus = FakeConsensus(running_on("n1"))
    answer = await authority("n1", consensus).ensure_peer_cannot_write(fence())
    assert answer.verdict is Verdict.PEER_OUTDATED
    assert consensus.state.guests["db"].outdated_nodes == ("n2",)
    # Asked again (DRBD retries after a reconnect): still a fresh commit, same answer.
    answer = await authority("n1", consensus).ensure_peer_cannot_write(fence())
    assert answer.verdict is Verdict.PEER_OUTDATED and len(consensus.proposed) == 2


async def test_without_a_majority_never_a_success() -> None:
    consensus = FakeConsensus(running_on("n1"))
    consensus.majority = False
    answer = await authority("n1", consensus).ensure_peer_cannot_write(fence())
    assert answer.verdict is Verdict.NO_MAJORITY
    assert consensus.state.guests["db"].outdated_nodes == ()
    unfence = FenceRequest(Op.UNFENCE_PEER, "r0", "n2")
    assert (
        await authority("n1", consensus).peer_may_write_again(unfence)
    ).verdict is Verdict.NO_MAJORITY


async def test_when_the_peer_owns_the_guest_this_side_is_outdated() -> None:
    consensus = FakeConsensus(running_on("n2"))
    answer = await authority("n1", consensus).ensure_peer_cannot_write(fence(peer="n2"))
    assert answer.verdict is Verdict.PEER_PRIMARY


async def test_the_new_owner_promoting_over_a_fenced_peer() -> None:
    # n1 owned db and failed; it was fenced; n2 now owns it (what DRBD 8.4 does when n2 is
    # promoted while disconnected: fence-peer runs on n2 first).
    state = running_on("n1")
    seq = state.node("n1").heartbeat_seq
    state = build(
        DeclareFailed("n1", seq, FailureEvidence("n3", seq, 2.0, "silent", 0.0)),
        FenceResult("n1", 1, True, FenceMethod.AGENT, "off", 0.0),
        state=state,
    )
    gen = state.guests["db"].generation
    state = build(
        AssignGuests((Assignment("db", "n2", gen),), "recovered", 0.0),
        GuestStarting("db", "n2", gen + 1, 0.0),
        state=state,
    )
    consensus = FakeConsensus(state)
    answer = await authority("n2", consensus).ensure_peer_cannot_write(fence(peer="n1"))
    assert answer.verdict is Verdict.PEER_FENCED
    assert consensus.state.guests["db"].outdated_nodes == ("n1",)


async def test_refusals() -> None:
    consensus = FakeConsensus(running_on("n1"))
    a = authority("n1", consensus)
    assert (await a.ensure_peer_cannot_write(fence(resource="r9"))).verdict is Verdict.REFUSED
    wrong = await a.ensure_peer_cannot_write(fence(peer="n3"))
    assert wrong.verdict is Verdict.REFUSED and "host names" in wrong.detail
    # n3 holds no replica; a non-owner holding one is refused by the state machine.
    assert (await authority("n3", consensus).ensure_peer_cannot_write(fence())).verdict is (
        Verdict.REFUSED
    )
    assert consensus.state.guests["db"].outdated_nodes == ()


async def test_unfence_commits_the_peer_current_again() -> None:
    consensus = FakeConsensus(running_on("n1"))
    a = authority("n1", consensus)
    await a.ensure_peer_cannot_write(fence())
    answer = await a.peer_may_write_again(FenceRequest(Op.UNFENCE_PEER, "r0", "n2"))
    assert answer.verdict is Verdict.UNFENCED
    assert consensus.state.guests["db"].outdated_nodes == ()
