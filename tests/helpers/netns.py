"""Network namespaces as "hosts" on one switch, for partition tests.

Python version of shared/lab/netns-cluster.sh. `NetnsLab(n)` makes n namespaces ("hosts"),
each with an `eth0` veth whose other end is plugged into a bridge living in a namespace of its
own, so the root namespace's network is never touched and the addresses exist only inside the
lab. Cutting a host is "pulling its cable": the switch-side port goes down.

Names carry a random tag, so several labs (or a leftover of a crashed run) never collide.
`down()` is idempotent and also runs when `up()` fails halfway (tests/helpers/updown.py): it
SIGKILLs whatever still runs inside the lab's namespaces (by pid, as listed by
`ip netns pids`) and deletes them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time

from tests.helpers.updown import UpDown

__all__ = ["NetnsError", "NetnsLab"]


class NetnsError(RuntimeError):
    pass


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


class NetnsLab(UpDown):
    """`hosts` namespaces on a bridge; host i (1-based) has address `<subnet>.<i>/24`.

    The bridge itself has `<subnet>.254` (`switch_ip`) inside the switch's namespace: a place
    for services every host reaches over its cable but that no host-side fault can take down
    (the simulated BMCs of tests/helpers/netns_cluster.py live there, like a management
    network that stays up when a host's own links fail).
    """

    def __init__(self, hosts: int = 3, subnet: str = "10.213.0") -> None:
        if not 1 <= hosts <= 250:
            raise ValueError("1..250 hosts")  # .254 is the switch
        tag = secrets.token_hex(3)
        self.tag = tag
        self.subnet = subnet
        self.switch = f"hasw-{tag}"
        self.hosts = tuple(f"ha{i}-{tag}" for i in range(1, hosts + 1))
        self._made: list[str] = []

    def ip(self, i: int) -> str:
        """Address of host i (1-based)."""
        return f"{self.subnet}.{i}"

    @property
    def switch_ip(self) -> str:
        """The bridge's address, inside the switch namespace."""
        return f"{self.subnet}.254"

    def host(self, i: int) -> str:
        """Namespace name of host i (1-based)."""
        return self.hosts[i - 1]

    def up(self) -> None:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root")
        super().up()

    def _up(self) -> None:
        self._add(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        _ip("-n", self.switch, "link", "set", "lo", "up")
        _ip("-n", self.switch, "addr", "add", f"{self.switch_ip}/24", "dev", "br0")
        for i, ns in enumerate(self.hosts, 1):
            self._add(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
                "netns", self.switch)  # fmt: skip
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)

    def cut(self, i: int) -> None:
        """Unplug host i: its switch port goes down (both directions, no RST, no ICMP)."""
        _ip("-n", self.switch, "link", "set", f"p{i}", "down")

    def heal(self, i: int) -> None:
        _ip("-n", self.switch, "link", "set", f"p{i}", "up")

    def pids(self) -> dict[str, list[int]]:
        """Processes inside each of the lab's namespaces."""
        out: dict[str, list[int]] = {}
        for ns in self._made:
            with contextlib.suppress(NetnsError):
                out[ns] = [int(p) for p in _ip("netns", "pids", ns).split()]
        return out

    def existing(self) -> list[str]:
        """The lab's namespaces that still exist."""
        listed = {line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()}
        return [ns for ns in (self.switch, *self.hosts) if ns in listed]

    def down(self) -> None:
        """Kill what still runs inside the lab, delete its namespaces, check they are gone."""
        for pids in self.pids().values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while any(self.pids().values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        errors = []
        for ns in reversed(self._made):
            try:
                _ip("netns", "del", ns)
            except NetnsError as exc:
                errors.append(str(exc))
        self._made.clear()
        left = self.existing()
        if left:
            raise NetnsError(f"namespaces left behind: {left} ({'; '.join(errors)})")
