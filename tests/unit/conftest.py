"""Fixtures shared by the unit tests of the consensus adapter on real pysyncobj."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.test_consensus import Trio
from tests.unit.test_raft_commit_notice import SlowTrio


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Trio]:
    """Three consensus replicas on free loopback ports; the test starts the ones it needs.
    Every replica still running is stopped at the end, also when the test fails."""
    t = Trio(tmp_path)
    try:
        yield t
    finally:
        t.stop_all()


@pytest.fixture
async def slow_trio(tmp_path: Path) -> AsyncIterator[SlowTrio]:
    """As `trio`, with the robust profile's election timeouts (a 0.2 s idle period)."""
    t = SlowTrio(tmp_path)
    try:
        yield t
    finally:
        t.stop_all()
