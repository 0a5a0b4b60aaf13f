"""`haagent check-config --here` on the Raft link: does this kernel retransmit quickly enough
for the configured lease (haagent.doctor.raft_link_verdict, consensus.retransmit_gap)?"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from haagent.consensus import retransmit_gap, rto_min_gap
from haagent.doctor import raft_link_verdict
from haagent.vendor.pysyncobj.tcp_connection import TCP_RTO_MIN_US


def test_a_short_lease_without_quick_retransmission_is_a_problem_with_advice() -> None:
    status, line = raft_link_verdict(1.2, "this kernel (6.1.0) has no per-socket TCP_RTO_MIN_US")
    assert status == 1
    assert "rto_min 20ms" in line and 'profile = "robust"' in line and "1.2s lease" in line
    assert "tcp_rto_min_us=20000" in line


def test_the_robust_lease_tolerates_slow_retransmission() -> None:
    status, line = raft_link_verdict(3.0, "this kernel (6.1.0) has no per-socket TCP_RTO_MIN_US")
    assert status == 0 and "tolerates it" in line


def test_quick_retransmission_is_fine_for_any_lease() -> None:
    assert raft_link_verdict(1.2, None)[0] == 0


def _kernel_takes_rto_min() -> bool:
    """Whether this kernel takes the per-socket minimum RTO (Linux 6.15+)."""
    with socket.socket() as s:
        try:
            s.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US, 20_000)
        except OSError:
            return False
        return True


def test_the_probe_tells_the_truth_about_this_kernel(tmp_path: Path) -> None:
    """With the system-wide minimum at Linux's default, only the per-socket option decides
    (the real sysctl may be short on some machine, which would answer None on its own)."""
    sysctl = tmp_path / "tcp_rto_min_us"
    sysctl.write_text("200000\n")
    gap = retransmit_gap(sysctl)
    assert (gap is None) == _kernel_takes_rto_min()
    if gap is not None:
        assert os.uname().release in gap


def test_a_short_system_wide_minimum_rto_serves_when_the_socket_option_is_missing() -> None:
    assert rto_min_gap("6.12.0", "Protocol not available", 20_000) is None
    slow = rto_min_gap("6.12.0", "Protocol not available", 200_000)
    assert slow is not None and "200000 us" in slow and "6.12.0" in slow
    unknown = rto_min_gap("6.1.0", "Protocol not available", None)
    assert unknown is not None and "default 200 ms" in unknown


def test_the_sysctl_is_read_when_the_socket_option_is_refused(tmp_path: Path) -> None:
    """A short system-wide minimum serves whether or not the per-socket option exists (the
    long one is covered above)."""
    sysctl = tmp_path / "tcp_rto_min_us"
    sysctl.write_text("20000\n")
    assert retransmit_gap(sysctl) is None
