"""The durable Raft journal (haagent/vendor/pysyncobj/journal.py) on a real file system.

What a power loss does to it is tested for real in tests/integration/test_power_loss.py; these
pin down the file format's rules: what is on disk after `flush`, what a torn tail becomes,
what counts as damage, and what a full disk does.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from haagent.vendor.pysyncobj.journal import (
    FileJournal,
    JournalCorrupt,
    JournalStorageError,
)


def open_journal(tmp_path: Path, reserve: int = 0) -> FileJournal:
    return FileJournal(str(tmp_path / "raft.journal"), reserveBytes=reserve)


def entries(j: FileJournal) -> list[tuple[bytes, int, int]]:
    return [j[i] for i in range(len(j))]


def filled(tmp_path: Path, n: int = 3, term: int = 1) -> FileJournal:
    j = open_journal(tmp_path)
    j.setCurrentTerm(term, "n2")
    for i in range(1, n + 1):
        j.add(b"cmd%d" % i, i, term)
    assert j.flush()
    return j


def test_entries_term_and_vote_survive_a_reopen(tmp_path: Path) -> None:
    j = filled(tmp_path)
    j._destroy()
    again = open_journal(tmp_path)
    assert entries(again) == [(b"cmd1", 1, 1), (b"cmd2", 2, 1), (b"cmd3", 3, 1)]
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (1, "n2")


def test_only_flushed_entries_are_on_disk(tmp_path: Path) -> None:
    j = filled(tmp_path, 2)
    j.add(b"cmd3", 3, 1)  # buffered, not flushed: a crash now loses it, and it was never acked
    assert j.durableIndex() == 2
    assert [e[1] for e in entries(open_journal(tmp_path))] == [1, 2]
    assert j.flush() and j.durableIndex() == 3
    assert [e[1] for e in entries(open_journal(tmp_path))] == [1, 2, 3]


@pytest.mark.parametrize("tail", [b"\x20\x00\x00\x00\x12\x34", b"\x00" * 40, b"\x05"])
def test_a_torn_tail_is_truncated_and_logged(
    tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    filled(tmp_path)._destroy()
    path = tmp_path / "raft.journal"
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(tail)
    with caplog.at_level(logging.WARNING):
        j = open_journal(tmp_path)
    assert [e[1] for e in entries(j)] == [1, 2, 3]
    assert path.stat().st_size == size
    assert "torn tail" in caplog.text


def test_a_last_frame_with_a_bad_checksum_is_a_torn_tail(tmp_path: Path) -> None:
    filled(tmp_path)._destroy()
    path = tmp_path / "raft.journal"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [e[1] for e in entries(open_journal(tmp_path))] == [1, 2]


def test_a_damaged_entry_followed_by_more_is_damage_not_a_tail(tmp_path: Path) -> None:
    filled(tmp_path)._destroy()
    path = tmp_path / "raft.journal"
    data = bytearray(path.read_bytes())
    data[len(b"HAJOURNAL1\n") + 10] ^= 0xFF  # inside the first entry
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="damaged entry at offset"):
        open_journal(tmp_path)


def test_a_gap_in_the_indexes_is_damage(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    j.setCurrentTerm(1, None)
    j.add(b"a", 1, 1)
    j.add(b"b", 3, 1)
    assert j.flush()
    with pytest.raises(JournalCorrupt, match=r"entry 3 .* follows entry 1"):
        open_journal(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_a_damaged_or_missing_term_file_is_damage(tmp_path: Path, damage: str) -> None:
    filled(tmp_path)._destroy()
    meta = tmp_path / "raft.journal.meta"
    if damage == "missing":
        meta.unlink()
    else:
        meta.write_bytes(meta.read_bytes()[:-3])
    with pytest.raises(JournalCorrupt):
        open_journal(tmp_path)


def test_a_foreign_file_is_damage(tmp_path: Path) -> None:
    open_journal(tmp_path)._destroy()
    (tmp_path / "raft.journal").write_bytes(b"PYSYNCOBJ\0\0\0 an older format")
    with pytest.raises(JournalCorrupt, match="wrong header"):
        open_journal(tmp_path)


def test_truncation_reaches_the_disk_and_counts(tmp_path: Path) -> None:
    j = filled(tmp_path, 5)
    j.deleteEntriesFrom(2)  # keeps entries 1, 2
    assert j.truncations == 1
    j.setCurrentTerm(2, None)
    j.add(b"new3", 3, 2)
    assert j.flush()
    assert entries(open_journal(tmp_path)) == [(b"cmd1", 1, 1), (b"cmd2", 2, 1), (b"new3", 3, 2)]


def test_clear_after_a_compaction_leaves_no_stale_prefix(tmp_path: Path) -> None:
    """Found by the power-loss harness: clear() truncated at the first kept entry, so the
    entries compacted away stayed in the file in front of the new ones (a gap on reload)."""
    j = filled(tmp_path, 6)
    j.deleteEntriesTo(3)  # a snapshot covers 1..3; the file keeps them until rewritten
    j.clear()
    j.add(b"s9", 9, 1)
    j.add(b"s10", 10, 1)
    assert j.flush()
    assert [e[1] for e in entries(open_journal(tmp_path))] == [9, 10]


def test_a_full_disk_stops_writes_before_they_fail_and_resumes(tmp_path: Path) -> None:
    j = filled(tmp_path, 2)
    j.reserveBytes = 1 << 62  # "less than the reserve is free"
    j.add(b"cmd3", 3, 1)
    assert not j.flush()
    assert j.storageError is not None and j.storageError.startswith("disk full")
    assert [e[1] for e in entries(open_journal(tmp_path))] == [1, 2]  # nothing half-written
    j.reserveBytes = 0
    assert j.flush() and j.storageError is None
    assert [e[1] for e in entries(open_journal(tmp_path))] == [1, 2, 3]


def test_a_vote_that_cannot_be_saved_raises_and_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = filled(tmp_path)

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(JournalStorageError):
        j.setCurrentTerm(2, "n3")
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (1, "n2")
    assert j.storageError is not None
    monkeypatch.undo()
    assert (
        open_journal(tmp_path).getCurrentTerm(),
        open_journal(tmp_path).getVotedForNodeId(),
    ) == (
        1,
        "n2",
    )
