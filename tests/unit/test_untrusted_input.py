"""The shared guards for untrusted input: bounded files and JSON, one-line text, a log that a
client cannot flood."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from haagent.api import BadInputLog
from haagent.untrusted import (
    UntrustedInputError,
    escape,
    json_depth,
    loads_json,
    read_small_file,
    read_small_text,
)


def test_files_that_would_block_or_never_end_are_refused_without_reading(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", Path("/dev/zero"), tmp_path, Path("/dev/null")):
        with pytest.raises(UntrustedInputError, match="not a regular file"):
            read_small_file(path, 100)
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(UntrustedInputError, match="larger than 100 bytes"):
        read_small_file(tmp_path / "big", 100)
    with pytest.raises(UntrustedInputError, match="NUL byte"):
        read_small_file(f"{tmp_path}/a\0b", 100)
    with pytest.raises(UntrustedInputError, match="too long"):
        read_small_file("/" + "x" * 5000, 100)
    (tmp_path / "bin").write_bytes(b"ok\xff")
    with pytest.raises(UntrustedInputError, match="not UTF-8") as err:
        read_small_text(tmp_path / "bin", 100)
    assert err.value.reason == "not UTF-8 text (byte 2)"
    (tmp_path / "ok").write_text("fine\n")
    assert read_small_text(tmp_path / "ok", 100) == "fine\n"


def test_json_depth_and_size_are_bounded_before_parsing() -> None:
    assert json_depth(b'{"a": "[[[[", "b": [1, {"c": "\\"]]"}]}') == 3
    with pytest.raises(UntrustedInputError, match="deeper than 32"):
        loads_json(b"[" * 100_000, max_bytes=10**6, max_depth=32)
    with pytest.raises(UntrustedInputError, match="larger than 10"):
        loads_json(b"[" + b" " * 20 + b"]", max_bytes=10, max_depth=32)
    for bad in (b'{"on": NaN}', b"[Infinity]", b"\xff", b"{"):
        with pytest.raises(UntrustedInputError):
            loads_json(bad, max_bytes=100, max_depth=4)
    assert loads_json(b'{"on": true}', max_bytes=100, max_depth=4) == {"on": True}


def test_escape_keeps_any_text_on_one_printable_line() -> None:
    shown = escape("a\nb\x00\x1b[31m\u2028\udcff é")
    assert shown == "a\\nb\\x00\\x1b[31m\\u2028\\udcff é" and shown.isprintable()
    assert escape("x" * 50, 10) == "xxxxxxx..."


def test_bad_input_is_logged_once_per_cause_then_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    bad = BadInputLog(logging.getLogger("t.bad"), interval_s=60, burst=5, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "t.bad"):
        for _ in range(1000):
            bad.note("401 wrong token")
        assert len(caplog.records) == 1
        for i in range(100):
            bad.note(f"cause {i}")
        assert len(caplog.records) == 5  # the burst, whatever the number of causes
        now[0] = 61.0
        bad.note("401 wrong token")
    assert len(caplog.records) == 6
    assert "999 more since the last report" in caplog.records[-1].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
