"""Bad input to the admin verbs gets a clear error, never a crash or a silent default: the
API's body check (`haagent.api_admin.parse_body`) and the CLI's durations
(`haagent.cli_admin.parse_duration`)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haagent.api_admin import BodyError, parse_body
from haagent.cli_admin import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("45s", 45.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        (" 1.5h ", 5400.0),
        ("7d", 604800.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "2w", "1h 30m", "m30", "8d", "nan", "inf", "1e9"])
def test_bad_durations_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.text(max_size=20))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 < seconds <= 7 * 86400 and math.isfinite(seconds)


def test_bodies() -> None:
    assert parse_body(None, {}) == {"by": "", "reason": ""}
    assert parse_body({"by": "a@b", "reason": "why"}, {}) == {"by": "a@b", "reason": "why"}
    assert parse_body({"node": "n2"}, {"node": "node"})["node"] == "n2"
    assert parse_body({"for_s": 60}, {"for_s": "seconds"})["for_s"] == 60.0


@pytest.mark.parametrize(
    ("body", "required", "why"),
    [
        ([], {}, "JSON object"),
        ({"on": True}, {}, "unknown field"),
        ({"by": 5}, {}, "'by' must be"),
        ({"by": "x" * 65}, {}, "'by' must be"),
        ({"reason": "a\x1b[2Jb"}, {}, "'reason' must be"),
        ({}, {"node": "node"}, "'node' must be"),
        ({"node": ""}, {"node": "node"}, "must not be empty"),
        ({"for_s": True}, {"for_s": "seconds"}, "number of seconds"),
        ({"for_s": "60"}, {"for_s": "seconds"}, "number of seconds"),
        ({"for_s": 0}, {"for_s": "seconds"}, "number of seconds"),
        ({"for_s": float("inf")}, {"for_s": "seconds"}, "number of seconds"),
    ],
)
def test_bad_bodies(body: Any, required: dict[str, str], why: str) -> None:
    with pytest.raises(BodyError, match=why):
        parse_body(body, required)
