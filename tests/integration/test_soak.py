"""The short soak in CI: a healthy 3-node cluster in network namespaces with 5 % random frame
loss on its bridge and two CPU burners, for 40 s, with the default timing profile. Nobody is
faulted, so every failure declaration, fence, Raft term change, sample without a lease, guest
restart or double run is a false alarm (issue 15). `benchmarks/soak.py` runs the long version.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_lossy_busy_network_causes_no_false_alarm(tmp_path: Path) -> None:
    result = soak(nodes=3, seconds=40.0, loss=0.05, burner_count=2, guests=3, run_dir=tmp_path)
    print("\n" + "\n".join(result.lines()))
    assert result.dropped_frames > 0, "the loss rule dropped nothing"
    assert result.samples > 3 * 40 * 3, "too few status samples to judge"
    assert result.double_runs == 0
    assert result.false_failures == 0 and result.fences == 0
    assert result.lease_loss_samples == 0 and result.guest_restarts == 0
    assert result.term_changes == 0
