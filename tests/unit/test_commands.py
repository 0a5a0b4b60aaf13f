"""The replicated command format: round trips, and clear refusals of anything else."""

from __future__ import annotations

import json

import pytest

from haagent.commands import (
    COMMAND_TYPES,
    AssignGuests,
    Assignment,
    CommandError,
    ConfirmFenced,
    DeclareFailed,
    DefineGuest,
    FenceResult,
    FenceStarted,
    GuestError,
    GuestRunning,
    GuestStarting,
    GuestStopped,
    Heartbeat,
    Join,
    Leave,
    LegFresh,
    LegStale,
    MigrateGuest,
    MigrationAborted,
    MigrationDone,
    MigrationResumed,
    NetworkCondition,
    ReplicaOutdated,
    ReplicaUpToDate,
    SetDesired,
    SetMaintenance,
    decode,
    encode,
)
from haagent.model import (
    DesiredState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    Leg,
    NodeRole,
    Raid1RunOn,
    StorageKind,
)

RAID1_SPEC = GuestSpec(
    "g",
    "g",
    512,
    storage=StorageKind.RAID1,
    legs=(
        Leg("a", "n1", "/dev/vg/g-a", "nbd://n1:10809/g-a"),
        Leg("b", "n2", "/dev/vg/g-b", "iscsi://n2:3260/iqn.2026-12.org.example:g-b/1"),
    ),
    raid1_run_on=Raid1RunOn.ANY,
)

EXAMPLES = [
    Join("n1", "inc", NodeRole.HYPERVISOR, True, 1.5),
    Heartbeat("n1", "inc"),
    DeclareFailed("n2", 7, FailureEvidence("n1", 7, 1.5, "silent", 2.0)),
    FenceResult("n2", 1, True, FenceMethod.AGENT, "off", 3.0),
    DefineGuest(GuestSpec("g", "g", 256, 3, ("n1",), ("n1", "n2")), 4.0),
    AssignGuests((Assignment("g", "n1", 0), Assignment("h", "n2", 4)), "placed", 5.0),
    GuestStopped("g", "n1", 3, True, False, "crashed", 6.0),
    GuestStopped("g", "n1", 3, True, False, "crashed after running 700 s", 6.0, True),
    Leave("n1", "inc", 7.0),
    FenceStarted("n2", 1, "n1", 8.0),
    SetDesired("g", DesiredState.STOPPED, "admin", 9.0),
    GuestStarting("g", "n1", 3, 10.0),
    GuestRunning("g", "n1", 3, 11.0),
    SetMaintenance("n1", True, "admin", 12.0),
    GuestError("g", 3, "failed on n1, n2, n3", 13.0),
    ReplicaOutdated("g", "n2", "n1", 3, 14.0),
    ReplicaUpToDate("g", "n2", "n1", 3, 15.0),
    ConfirmFenced("n2", 4, "api@n1 (token)", 16.0),
    SetDesired("g", DesiredState.RUNNING, "admin", 17.0, expect_version=3),
    SetMaintenance("n1", False, "admin", 18.0, expect_version=2),
    DefineGuest(GuestSpec("g", "g", 512), 19.0, expect_version=1),
    NetworkCondition("n1", "inc", ("br-backend", "eth0.100"), 20.0),
    DefineGuest(GuestSpec("g", "g", 512, networks=("br0", "eth1")), 21.0, expect_version=2),
    MigrateGuest("g", "n2", 3, "api@n1 (token)", 22.0),
    MigrationDone("g", "n1", 3, 23.0),
    MigrationAborted("g", "n1", 3, "libvirt: connection refused", 24.0),
    MigrationResumed("g", "n2", 4, 25.0),
    DefineGuest(RAID1_SPEC, 22.0, expect_version=3),
    LegStale("g", "b", "n1", 4, "starting on n1 while n2 is fenced", 23.0),
    LegFresh("g", "b", "n1", 4, "the guest's RAID1 reports it in sync", 24.0),
]


@pytest.mark.parametrize("command", EXAMPLES, ids=lambda c: type(c).__name__)
def test_round_trip(command: object) -> None:
    assert decode(encode(command)) == command  # type: ignore[arg-type]


def test_every_command_type_is_round_tripped() -> None:
    assert {type(c).type_name for c in EXAMPLES} == set(COMMAND_TYPES)


def test_a_guest_stopped_from_before_fresh_count_decodes_as_not_fresh() -> None:
    old = b'{"v": 1, "type": "guest_stopped", "guest": "g", "node": "n1", "generation": 3,'
    old += b' "failed": true, "give_up": false, "reason": "crashed", "at": 6.0}'
    assert decode(old) == GuestStopped("g", "n1", 3, True, False, "crashed", 6.0, False)


def test_admin_commands_from_before_versions_decode_as_unconditional() -> None:
    # Journals written by 0.1 agents hold these without expect_version; replaying them must
    # reproduce exactly what was applied then.
    old = b'{"v": 1, "type": "set_desired", "guest": "g", "desired": "stopped",'
    old += b' "by": "admin", "at": 9.0}'
    assert decode(old) == SetDesired("g", DesiredState.STOPPED, "admin", 9.0, None)


def test_wire_format_is_versioned_json_not_pickle() -> None:
    body = json.loads(encode(Heartbeat("n1", "inc", 42)))
    assert body == {
        "v": 1,
        "type": "heartbeat",
        "node": "n1",
        "incarnation": "inc",
        "applied_index": 42,
        "checkpoint": None,
    }


def test_heartbeats_and_joins_from_before_applied_index_decode_as_unknown() -> None:
    # Journals written before issue 8 item 8 hold heartbeats and joins without the sender's
    # applied index: they decode as "unknown" (None), which failure detection treats as before.
    old = b'{"v": 1, "type": "heartbeat", "node": "n1", "incarnation": "inc"}'
    assert decode(old) == Heartbeat("n1", "inc", None)
    old = b'{"v": 1, "type": "join", "node": "n1", "incarnation": "inc", "role": "hypervisor",'
    old += b' "clean": true, "at": 1.0}'
    joined = decode(old)
    assert isinstance(joined, Join) and joined.applied_index is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x80\x04pickle", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"v": 2, "type": "heartbeat", "node": "n1", "incarnation": "i"}', "version 2"),
        (b'{"type": "heartbeat", "node": "n1", "incarnation": "i"}', "version None"),
        (b'{"v": 1, "type": "teleport", "node": "n1"}', "unknown command type 'teleport'"),
        (b'{"v": 1, "type": "heartbeat", "node": "n1"}', "incarnation: missing"),
        (
            b'{"v": 1, "type": "heartbeat", "node": 3, "incarnation": "i"}',
            "node: expected a string",
        ),
        (
            b'{"v": 1, "type": "heartbeat", "node": "n1", "incarnation": "i", "extra": 1}',
            "unknown field(s) extra",
        ),
        (
            b'{"v": 1, "type": "join", "node": "n1", "incarnation": "i", "role": "boss",'
            b' "clean": true, "at": 0}',
            "role: unknown value 'boss'",
        ),
        (
            b'{"v": 1, "type": "assign_guests", "assignments": [{"guest": "g", "node": "n1",'
            b' "expected_generation": "0"}], "reason": "r", "at": 0}',
            "assignments[0].expected_generation: expected an integer",
        ),
    ],
)
def test_bad_or_foreign_commands_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(CommandError) as err:
        decode(payload)
    assert message in str(err.value)


def test_booleans_are_not_integers() -> None:
    payload = (
        b'{"v": 1, "type": "fence_result", "node": "n", "epoch": true, "ok": true,'
        b' "method": "agent", "detail": "", "at": 0}'
    )
    with pytest.raises(CommandError, match="epoch: expected an integer"):
        decode(payload)
