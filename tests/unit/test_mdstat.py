"""The mdstat parser and leg verdicts against real captures (tests/fixtures/mdstat/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haagent.resources.mdstat import MdstatError, member_verdict, parse_mdstat

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mdstat"


def capture(name: str) -> tuple[str, dict[str, str]]:
    states = {}
    for line in (FIXTURES / f"{name}.states").read_text().splitlines():
        device, state = line.split(" ", 1)
        states[device] = state
    return (FIXTURES / f"{name}.mdstat").read_text(), states


def verdicts(name: str, with_states: bool = True) -> dict[str, str]:
    text, states = capture(name)
    array = parse_mdstat(text)["md0"]
    return {
        m.device: member_verdict(array, m, states[m.device] if with_states else None)
        for m in array.members
    }


@pytest.mark.parametrize(
    ("name", "expected", "progress"),
    [
        ("clean", {"vda": "in_sync", "vdb": "in_sync"}, None),
        ("resync", {"vda": "resyncing", "vdb": "resyncing"}, 4224 / 64512),
        ("faulty", {"vda": "in_sync", "vdb": "faulty"}, None),
        ("degraded", {"vda": "in_sync"}, None),
        ("recovering", {"vda": "in_sync", "vdb": "resyncing"}, 2944 / 64512),
        ("leg-lost", {"vda": "in_sync", "vdb": "faulty"}, None),
    ],
)
def test_real_captures(name: str, expected: dict[str, str], progress: float | None) -> None:
    array = parse_mdstat(capture(name)[0])["md0"]
    assert verdicts(name) == expected
    assert array.sync_progress == progress
    assert array.level == "raid1" and array.active and array.raid_disks == 2


def test_array_fields_of_a_recovery() -> None:
    array = parse_mdstat(capture("recovering")[0])["md0"]
    assert array.degraded
    assert (array.working_disks, array.slots, array.sync_action) == (1, "U_", "recovery")
    member = array.member("vdb")
    assert member is not None and member.descriptor == 2 and member.flags == frozenset()
    faulty = parse_mdstat(capture("faulty")[0])["md0"].member("vdb")
    assert faulty is not None and faulty.flags == {"F"}


def test_mdstat_alone_never_guesses_which_half_is_current() -> None:
    # Without the state file the rebuilt member looks exactly like the survivor: refuse.
    with pytest.raises(MdstatError, match="state file is needed"):
        verdicts("recovering", with_states=False)
    # Where mdstat alone decides, it is enough.
    assert verdicts("clean", with_states=False) == {"vda": "in_sync", "vdb": "in_sync"}
    assert verdicts("faulty", with_states=False)["vdb"] == "faulty"


def test_queued_sync_read_only_inactive_and_spare() -> None:
    text = """Personalities : [raid1]
md1 : active (auto-read-only) raid1 vdc[2](S) vdb[1] vda[0]
      64512 blocks super 1.2 [2/2] [UU]
md0 : active raid1 vdb[2] vda[0]
      64512 blocks super 1.2 [2/1] [U_]
      \tresync=DELAYED
md9 : inactive vdd[0](S)
      64512 blocks super 1.2

unused devices: <none>
"""
    arrays = parse_mdstat(text)
    md1, md0, md9 = arrays["md1"], arrays["md0"], arrays["md9"]
    assert md1.read_only and not md1.degraded
    spare = md1.member("vdc")
    assert spare is not None and member_verdict(md1, spare, "spare") == "missing"
    assert (md0.sync_action, md0.sync_queued, md0.sync_progress) == ("resync", True, 0.0)
    assert not md9.active and md9.level is None
    member = md9.member("vdd")
    assert member is not None and member_verdict(md9, member, None) == "missing"


@pytest.mark.parametrize(
    "text",
    ["", "md0 : active raid1 vda[0]\n", "Personalities : [raid1]\nmd0 : active raid1 vda\n"],
)
def test_garbage_is_a_clear_error(text: str) -> None:
    with pytest.raises(MdstatError):
        parse_mdstat(text)


def test_write_error_counts_as_faulty() -> None:
    array = parse_mdstat(capture("clean")[0])["md0"]
    member = array.member("vdb")
    assert member is not None
    assert member_verdict(array, member, "in_sync,write_error") == "faulty"
    assert member_verdict(array, member, "in_sync,write_mostly\n") == "in_sync"
