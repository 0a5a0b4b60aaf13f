"""Port picks for local clusters: distinct, free for TCP and UDP, outside the ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

from haagent.localcluster.ports import free_port


def test_picks_are_distinct_free_and_outside_the_ephemeral_range() -> None:
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= p <= high and p >= 1024 for p in ports)
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", ports[-1]))


def test_a_taken_port_is_never_picked() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        held = taken.getsockname()[1]
        assert held not in {free_port() for _ in range(200)}
