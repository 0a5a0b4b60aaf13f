#!/usr/bin/python3
"""fence_nbd_leg: storage fencing of a node by revoking its access to NBD-exported RAID1 legs.

A fence agent with the stock fence-agents interface, so that it fits a haagent `[[fence]]`
level (and Pacemaker) unchanged: no arguments, one `key=value` parameter per stdin line, the
answer in the exit status (0 = success; for `status`: 0 = ON, the node still has access,
2 = OFF, it has none; 1 = failure). Standard library only, so that it runs on a leg holder
without haagent installed.

Parameters:
    action           off | on | status | monitor | metadata
    allow_file       the nbd-server `authfile` of each export to fence the node from,
                     comma-separated; each item may be a glob (e.g. /etc/nbd-server/allow/*)
    address          the node's address(es) as the NBD server sees them, comma-separated
    server_pid_file  nbd-server's pid file (-p): its connection children are how open
                     connections are cut

What `off` does, on the host that runs nbd-server (the leg's holder):
1. removes the node's addresses from every allow file (atomic rename): nbd-server reads the
   file on every new connection, so the node can no longer connect;
2. SIGKILLs every nbd-server connection child whose TCP peer is one of the node's addresses:
   its open connections end, and QEMU's NBD client (no reconnect by default) fails the next
   request, which pauses a guest whose disk has `error_policy='stop'`;
3. reports success only when `status` then finds the node OFF.

Refusals (exit 1, message on stderr): a missing allow file (nbd-server then admits everybody),
an allow file that admits the node through a network line (10.0.0.0/24) it cannot remove
without cutting others, a glob that matches nothing, an unreadable pid file.

What it guarantees, and what not: once `off` succeeded, the node's writes to these exports
stop (no open connection, none accepted). It does not touch the node's own local leg, which
diverges from then on; the cluster must record that leg stale (haagent does, before a degraded
start). It must run where nbd-server runs; to run it from another host, wrap it in ssh (stdin
passes through unchanged).
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterable

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_nbd_leg" shortdesc="Storage fencing: revoke a node's NBD access">
<longdesc>Removes the node's addresses from nbd-server allow files (authfile) and cuts its open
connections, so that the node can no longer write to the RAID1 legs exported here.</longdesc>
<parameters>
<parameter name="action" unique="1" required="1"><content type="string" default="off"/>
<shortdesc lang="en">off, on, status, monitor or metadata</shortdesc></parameter>
<parameter name="allow_file" unique="0" required="1"><content type="string"/>
<shortdesc lang="en">nbd-server authfile(s), comma-separated, globs allowed</shortdesc></parameter>
<parameter name="address" unique="0" required="1"><content type="string"/>
<shortdesc lang="en">the node's address(es) as nbd-server sees them</shortdesc></parameter>
<parameter name="server_pid_file" unique="0" required="1"><content type="string"/>
<shortdesc lang="en">nbd-server's pid file</shortdesc></parameter>
</parameters>
<actions><action name="off"/><action name="on"/><action name="status"/><action name="monitor"/>
<action name="metadata"/></actions>
</resource-agent>
"""

EXIT_OK, EXIT_FAIL, EXIT_OFF = 0, 1, 2
CUT_TIMEOUT_S = 5.0
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedError(Exception):
    """The action cannot be done safely; the message says why."""


def read_params(lines: Iterable[str]) -> dict[str, str]:
    params = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise RefusedError(f"not a key=value line: {line!r}")
        params[key.strip()] = value.strip()
    return params


def allow_files(spec: str) -> list[str]:
    files: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if glob.has_magic(item):
            matched = sorted(glob.glob(item))
            if not matched:
                raise RefusedError(f"allow_file {item!r} matches no file")
            files += matched
        elif not os.path.isfile(item):
            # nbd-server admits every client when an export's authfile does not exist.
            raise RefusedError(
                f"allow file {item} does not exist (nbd-server would admit everybody)"
            )
        else:
            files.append(item)
    if not files:
        raise RefusedError("no allow_file given")
    return files


def addresses(spec: str) -> list[IpAddress]:
    try:
        found = [ipaddress.ip_address(a.strip()) for a in spec.split(",") if a.strip()]
    except ValueError as exc:
        raise RefusedError(f"address: {exc}") from None
    if not found:
        raise RefusedError("no address given")
    return found


def _admits(line: str, address: IpAddress) -> bool:
    try:
        return address in ipaddress.ip_network(line, strict=False)
    except ValueError:
        return False  # nbd-server skips what it cannot parse as well


def allowed_in(path: str, addrs: list[IpAddress]) -> list[str]:
    """The lines of `path` that admit any of `addrs`."""
    with open(path) as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and any(_admits(line, a) for a in addrs)]


def rewrite(path: str, keep: list[str]) -> None:
    """Replace `path` by `keep` atomically (a reader sees the old or the new file whole)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fence_nbd_leg.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{line}\n" for line in keep))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _tcp_peers() -> dict[int, IpAddress]:
    """Socket inode -> remote address of every TCP socket (IPv4 and IPv6)."""
    peers: dict[int, IpAddress] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            raw = bytes.fromhex(fields[2].split(":")[0])
            # The kernel prints each 32-bit word in host (little-endian) byte order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addr: IpAddress = (
                ipaddress.ip_address(packed) if width == 8 else ipaddress.IPv6Address(packed)
            )
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            peers[int(fields[9])] = addr
    return peers


def connections(server_pid_file: str, addrs: list[IpAddress]) -> list[int]:
    """Pids of nbd-server's connection children whose peer is one of `addrs`."""
    try:
        with open(server_pid_file) as f:
            server = int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise RefusedError(f"server_pid_file {server_pid_file}: {exc}") from None
    peers = _tcp_peers()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
            if ppid != server:
                continue
            links = [
                os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")
            ]
        except (OSError, ValueError):
            continue  # gone meanwhile
        inodes = {int(link[8:-1]) for link in links if link.startswith("socket:[")}
        if any(peers.get(inode) in addrs for inode in inodes):
            found.append(int(entry))
    return found


def status(p: dict[str, str]) -> int:
    addrs = addresses(p.get("address", ""))
    admitted = [f for f in allow_files(p.get("allow_file", "")) if allowed_in(f, addrs)]
    open_conns = connections(p.get("server_pid_file", ""), addrs)
    if admitted or open_conns:
        print(f"ON: admitted by {admitted}, open connections {open_conns}")
        return EXIT_OK
    print("OFF")
    return EXIT_OFF


def off(p: dict[str, str]) -> int:
    addrs = addresses(p.get("address", ""))
    files = allow_files(p.get("allow_file", ""))
    for path in files:
        lines = allowed_in(path, addrs)
        networks = [
            line for line in lines if ipaddress.ip_network(line, strict=False).num_addresses > 1
        ]
        if networks:
            raise RefusedError(
                f"{path} admits the node through {networks}: list hosts one per line"
            )
    for path in files:
        with open(path) as f:
            current = [line.strip() for line in f if line.strip()]
        revoked = set(allowed_in(path, addrs))
        if revoked:
            rewrite(path, [line for line in current if line not in revoked])
    deadline = time.monotonic() + CUT_TIMEOUT_S
    while pids := connections(p.get("server_pid_file", ""), addrs):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RefusedError(f"connections {pids} still open after {CUT_TIMEOUT_S} s")
        time.sleep(0.05)
    return EXIT_OK if status(p) == EXIT_OFF else EXIT_FAIL


def on(p: dict[str, str]) -> int:
    addrs = addresses(p.get("address", ""))
    for path in allow_files(p.get("allow_file", "")):
        with open(path) as f:
            current = [line.strip() for line in f if line.strip()]
        missing = [str(a) for a in addrs if not any(_admits(line, a) for line in current)]
        if missing:
            rewrite(path, current + missing)
    return EXIT_OK


def monitor(p: dict[str, str]) -> int:
    allow_files(p.get("allow_file", ""))
    addresses(p.get("address", ""))
    connections(p.get("server_pid_file", ""), [])
    return EXIT_OK


def main(argv: list[str]) -> int:
    try:
        if argv[1:] in (["-o", "metadata"], ["--action=metadata"]):
            params = {"action": "metadata"}
        else:
            params = read_params(sys.stdin)
        action = params.get("action", "off")
        if action == "metadata":
            sys.stdout.write(METADATA)
            return EXIT_OK
        actions = {"off": off, "on": on, "status": status, "monitor": monitor}
        if action not in actions:
            raise RefusedError(
                f"unsupported action {action!r} (off, on, status, monitor, metadata)"
            )
        return actions[action](params)
    except RefusedError as exc:
        print(f"fence_nbd_leg: {exc}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main(sys.argv))
