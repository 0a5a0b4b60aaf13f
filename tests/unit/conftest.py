"""Fixtures shared by the unit tests of the consensus adapter on real pysyncobj."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.test_consensus import Trio


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Trio]:
    """Three consensus replicas on free loopback ports; the test starts the ones it needs.
    Every replica still running is stopped at the end, also when the test fails."""
    t = Trio(tmp_path)
    try:
        yield t
    finally:
        for name in list(t.nodes):
            t.stop(name)
