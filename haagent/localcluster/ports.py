"""Free loopback ports for the local cluster, its tests and benchmarks.

Binding port 0 and closing the socket is racy in two ways that both hit these tests: the
kernel may hand out the same port again to the next bind-to-0 of the same plan, and any
outgoing connection (pysyncobj dials peers, tests poll the API) may take it as its source
port before the agent binds it. So ports are picked at random *outside* the kernel's
ephemeral range, where no outgoing connection ever lands, checked free for TCP and UDP (a BMC
listens on UDP), and never handed out twice by one process.
"""

from __future__ import annotations

import errno
import random
import socket
import threading
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # below: well-known and registered services
_lock = threading.Lock()
_handed_out: set[int] = set()
_rng = random.SystemRandom()


class NoFreePortError(RuntimeError):
    """No free port outside the ephemeral range after many tries."""


def _candidates() -> list[range]:
    try:
        low, high = (int(x) for x in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    ranges = [range(_LOWEST, low), range(high + 1, 65536)]
    return [r for r in ranges if len(r) > 0]


def port_free(host: str, port: int, kind: int, *, reuse_address: bool = False) -> bool:
    """Can a socket of `kind` (SOCK_STREAM, SOCK_DGRAM) bind `host:port` now? Only "address
    in use" counts as taken; other errors (no permission, no such address) are raised.
    `reuse_address` binds as listeners with SO_REUSEADDR do: a TIME_WAIT does not block."""
    with socket.socket(socket.AF_INET, kind) as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that is free for TCP and UDP now, outside the ephemeral range, and
    not returned before by this process. Another program may still bind it first; the
    agent or BMC then fails to start with a clear error."""
    ranges = _candidates()
    if not ranges:
        raise NoFreePortError(
            f"the ephemeral range {_EPHEMERAL_RANGE} leaves no port above {_LOWEST}"
        )
    with _lock:
        for _ in range(1000):
            span = _rng.choices(ranges, weights=[len(r) for r in ranges])[0]
            port = _rng.choice(span)
            if port in _handed_out:
                continue
            try:
                free = port_free(host, port, socket.SOCK_STREAM) and port_free(
                    host, port, socket.SOCK_DGRAM
                )
            except PermissionError:
                continue
            if free:
                _handed_out.add(port)
                return port
    raise NoFreePortError(f"no free port on {host} after 1000 tries")
