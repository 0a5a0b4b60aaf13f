"""Pure parser of Linux md's `/proc/mdstat`, and the per-leg verdict of a guest RAID1.

The guest-RAID1 adapter (haagent.resources.mirrors) reads, from inside a guest, `/proc/mdstat`
and for each member `/sys/block/<md>/md/dev-<member>/state`; this module turns those texts into
records and decides, for one member, one of the leg states the core knows:

    "in_sync"    md holds the member as an up-to-date half of the mirror
    "resyncing"  md is rebuilding the member (recovery), or is resyncing the whole array
    "faulty"     md failed the member (an I/O error, or `mdadm --fail`)
    "missing"    the member is not a half of the mirror at all (absent, or an idle spare)

Why sysfs as well as mdstat: in a degraded RAID1 that is recovering, `/proc/mdstat` lists the
member being rebuilt exactly like the surviving one (no marker; the number in brackets is the
member's descriptor number, not its slot), so only the member's own `state` file (`in_sync` or
not) says which half is current. A wrong answer there would let the core mark a half fresh that
md is still writing, so the verdict needs that file for every unmarked member of a degraded
array and refuses to guess without it.

During a whole-array `resync` (after creation, or after an unclean stop without a bitmap) md
keeps every member `in_sync` while it makes them identical; the verdict is then "resyncing"
for every member, because until it ends md itself does not hold the halves equal. That is
the cautious side: after an unclean stop the halves differ only in the writes that were in
flight, but after a creation one half may still be mostly empty, and mdstat does not say
which of the two it is (nor which member md copies from).

Nothing here does I/O; the texts come from real captured outputs in tests/fixtures/mdstat/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LegState",
    "MdArray",
    "MdMember",
    "MdstatError",
    "member_verdict",
    "parse_mdstat",
]

LegState = Literal["in_sync", "resyncing", "faulty", "missing"]

# "md0 : active raid1 vdb[2] vda[0](F)"; the level is absent while an array is inactive.
_HEADER_RE = re.compile(r"^(md[\w/-]*)\s*:\s*(active|inactive)\b(.*)$")
_MEMBER_RE = re.compile(r"^([\w.!/-]+)\[(\d+)\]((?:\([A-Z]\))*)$")
# "65472 blocks super 1.2 [2/1] [U_]"
_COUNTS_RE = re.compile(r"\[(\d+)/(\d+)\]\s+\[([U_]+)\]")
# "[==>.....]  recovery = 12.6% (8256/65472) finish=0.1min speed=8256K/sec"
_PROGRESS_RE = re.compile(
    r"\b(resync|recovery|reshape|check|repair)\s*=\s*(\d+(?:\.\d+)?)%(?:\s*\((\d+)/(\d+)\))?"
)
# "resync=DELAYED", "recovery=PENDING": a sync that md has queued but not started.
_QUEUED_RE = re.compile(r"\b(resync|recovery|reshape|check|repair)\s*=\s*(DELAYED|PENDING)\b")
_LEVELS = ("linear", "multipath", "faulty", *(f"raid{n}" for n in (0, 1, 4, 5, 6, 10)))


class MdstatError(ValueError):
    """The text is not a `/proc/mdstat` this parser understands (the message says where)."""


@dataclass(frozen=True)
class MdMember:
    """One member as mdstat lists it: `vdb[2](F)` is device vdb, descriptor 2, flags {"F"}.

    Flags: F faulty, S spare, W write-mostly, R replacement, J journal.
    """

    device: str
    descriptor: int
    flags: frozenset[str]


@dataclass(frozen=True)
class MdArray:
    """One array. `raid_disks`/`working_disks`/`slots` come from `[2/1] [U_]` (None when md
    does not print them, e.g. for an inactive array). `sync_action` is the running (or queued,
    then `sync_queued` is True) operation: resync, recovery, reshape, check or repair.
    `sync_progress` is 0.0-1.0 from the block counts (or the percentage), None when idle."""

    name: str
    active: bool
    level: str | None
    read_only: bool
    members: tuple[MdMember, ...]
    raid_disks: int | None
    working_disks: int | None
    slots: str | None
    sync_action: str | None
    sync_queued: bool
    sync_progress: float | None

    @property
    def degraded(self) -> bool:
        """Fewer working members than slots (as md counts them)."""
        return (
            self.raid_disks is not None
            and self.working_disks is not None
            and self.working_disks < self.raid_disks
        )

    def member(self, device: str) -> MdMember | None:
        return next((m for m in self.members if m.device == device), None)


def parse_mdstat(text: str) -> dict[str, MdArray]:
    """The arrays of a `/proc/mdstat` text, by name (md0, md127, ...).

    Raises MdstatError on a text that does not look like mdstat (no "Personalities" line) or
    on an array header or member it cannot read; unknown extra lines (bitmap, unused devices)
    are ignored.
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Personalities"):
        raise MdstatError("not /proc/mdstat: the first line is not 'Personalities : ...'")
    arrays: dict[str, MdArray] = {}
    i = 1
    while i < len(lines):
        match = _HEADER_RE.match(lines[i])
        if match is None:
            i += 1
            continue
        body: list[str] = []
        i += 1
        # An array's detail lines are indented; a blank line or the next header ends them.
        while i < len(lines) and lines[i].startswith((" ", "\t")):
            body.append(lines[i].strip())
            i += 1
        array = _array(match.group(1), match.group(2) == "active", match.group(3), body)
        arrays[array.name] = array
    return arrays


def _array(name: str, active: bool, rest: str, body: list[str]) -> MdArray:
    words = rest.split()
    read_only = False
    while words and words[0].startswith("("):
        # "(read-only)", "(auto-read-only)"
        read_only = read_only or "read-only" in words[0]
        words.pop(0)
    level = words.pop(0) if words and words[0] in _LEVELS else None
    members = []
    for word in words:
        m = _MEMBER_RE.match(word)
        if m is None:
            raise MdstatError(f"{name}: cannot read member {word!r}")
        flags = frozenset(re.findall(r"\(([A-Z])\)", m.group(3)))
        members.append(MdMember(m.group(1), int(m.group(2)), flags))
    raid_disks = working = None
    slots = None
    action: str | None = None
    queued = False
    progress: float | None = None
    for line in body:
        counts = _COUNTS_RE.search(line)
        if counts is not None:
            raid_disks, working = int(counts.group(1)), int(counts.group(2))
            slots = counts.group(3)
        prog = _PROGRESS_RE.search(line)
        if prog is not None:
            action = prog.group(1)
            if prog.group(3) is not None and int(prog.group(4)) > 0:
                progress = int(prog.group(3)) / int(prog.group(4))
            else:
                progress = float(prog.group(2)) / 100.0
            progress = min(max(progress, 0.0), 1.0)
        waiting = _QUEUED_RE.search(line)
        if waiting is not None:
            action, queued, progress = waiting.group(1), True, 0.0
    return MdArray(
        name=name,
        active=active,
        level=level,
        read_only=read_only,
        members=tuple(members),
        raid_disks=raid_disks,
        working_disks=working,
        slots=slots,
        sync_action=action,
        sync_queued=queued,
        sync_progress=progress,
    )


def member_verdict(array: MdArray, member: MdMember, sysfs_state: str | None) -> LegState:
    """The leg state of `member` of `array`.

    `sysfs_state` is the text of `/sys/block/<array>/md/dev-<device>/state` (comma-separated
    flags such as "in_sync", "faulty", "spare", "write_mostly"), or None when it could not be
    read. Without it, only members whose mdstat markers and counts decide alone get a verdict;
    an unmarked member of an array that is rebuilding one (more unmarked members than working
    ones, or a recovery running) raises MdstatError, because mdstat cannot tell the rebuilt
    member from the survivor (see the module docstring).
    """
    if not array.active:
        return "missing"
    if "F" in member.flags:
        return "faulty"
    flags = None if sysfs_state is None else set(sysfs_state.strip().split(","))
    if flags is not None and ("faulty" in flags or "write_error" in flags):
        return "faulty"
    if "S" in member.flags or (flags is not None and "spare" in flags):
        # A spare holds no copy: it is one only once a recovery rebuilds it.
        return "resyncing" if array.degraded or array.sync_action == "recovery" else "missing"
    if array.sync_action == "resync":
        return "resyncing"
    if flags is None:
        # md counts only in-sync members as working: when every unmarked member is counted,
        # each one is in sync; otherwise one of them is being rebuilt and mdstat cannot say which.
        unmarked = sum(1 for m in array.members if not m.flags & {"F", "S"})
        if unmarked != array.working_disks or array.sync_action in ("recovery", "reshape"):
            raise MdstatError(
                f"{array.name}: {member.device} is unmarked in a degraded or recovering array; "
                "its md state file is needed to tell whether it is the current half"
            )
        return "in_sync"
    return "in_sync" if "in_sync" in flags else "resyncing"
