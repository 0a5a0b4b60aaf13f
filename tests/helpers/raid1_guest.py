"""Real guest RAID1 for the tests: NBD leg servers on the host, a TCG guest under libvirtd.

The host kernel has no md and no NBD client, but QEMU's own NBD client reaches `nbd-server`
on the host, and md RAID1 runs inside a TCG guest booted from Debian's kernel
(tests/raid1_guest/: BusyBox initramfs with mdadm and qemu-guest-agent). Each leg is served by
its own `NbdServer`, which stands in for the leg's holder host: killing it is that host's
failure as the guest sees it.

Everything started here is stopped by its `close()` (SIGKILL of the pids we started and of
their connection children), which the fixtures call even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import libvirt

from haagent.resources.guest_agent import GuestAgentError, exec_in_guest
from haagent.resources.mirrors import ErrorPolicy, leg_disk_xml, parse_leg_source
from tests.helpers import guest_image
from tests.helpers.drbd_guest import free_port

BOOT_TIMEOUT_S = 400.0  # as for the DRBD guests: 40-160 s measured on a loaded 2-core host

_T = TypeVar("_T")


def ensure_image() -> Path:
    return guest_image.ensure_image("raid1_guest", "raid1-guest")


def wait_for(
    what: str, probe: Callable[[], _T | None], timeout_s: float, poll_s: float = 0.2
) -> _T:
    """Poll `probe` until it returns something other than None; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except (GuestAgentError, libvirt.libvirtError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s (last error: {last_error})")
        time.sleep(poll_s)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (in parentheses) may hold blanks; the ppid follows the state.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry))
    return found


class NbdServer:
    """One `nbd-server` exporting one leg image as `export`, with a per-export allow file.

    `kill()` is the holder's failure: the listener and every connection child get SIGKILL.
    """

    def __init__(self, run_dir: Path, export: str, size_mib: int) -> None:
        self.export = export
        self.dir = run_dir / f"nbd-{export}"
        self.dir.mkdir(parents=True)
        self.image = self.dir / f"{export}.img"
        with open(self.image, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        self.allow_file = self.dir / "allow"
        self.allow_file.write_text("127.0.0.1\n")
        self.pid_file = self.dir / "nbd-server.pid"
        self.port = free_port()
        self.config = self.dir / "nbd.conf"
        self.config.write_text(
            f"[generic]\nlistenaddr = 127.0.0.1\nport = {self.port}\nallowlist = true\n"
            f"[{export}]\nexportname = {self.image}\nauthfile = {self.allow_file}\n"
        )
        self.pid: int | None = None

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.export}"

    def start(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        # nbd-server forks into the background and writes the listener's pid.
        subprocess.run(
            ["nbd-server", "-C", str(self.config), "-p", str(self.pid_file)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.pid = wait_for(f"nbd-server {self.export} pid file", self._read_pid, 10, 0.05)

    def _read_pid(self) -> int | None:
        # The file may exist before nbd-server has written its number.
        text = self.pid_file.read_text().strip() if self.pid_file.exists() else ""
        return int(text) if text.isdigit() else None

    def kill(self) -> None:
        if self.pid is None:
            # A start that failed after nbd-server forked: find it through its pid file, and
            # only if that pid still runs our config (pids are reused).
            pid = self._read_pid()
            try:
                ours = (
                    pid is not None and str(self.config) in Path(f"/proc/{pid}/cmdline").read_text()
                )
            except OSError:
                ours = False
            if not ours:
                return
            self.pid = pid
        assert self.pid is not None
        pids = [self.pid, *_children(self.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid = None

    close = kill

    def connections(self) -> list[int]:
        """The pids of the children serving client connections (nbd-server forks one per
        connection)."""
        return [] if self.pid is None else _children(self.pid)

    def connect_from(self, source: str) -> socket.socket:
        """A TCP connection to the server from address `source` (nodes are told apart by
        address); returns once its child serves it (the server's greeting arrived)."""
        conn = socket.create_connection(
            ("127.0.0.1", self.port), timeout=5, source_address=(source, 0)
        )
        assert conn.recv(8) == b"NBDMAGIC"
        return conn


def closed(conn: socket.socket) -> bool | None:
    """True once the server closed or reset `conn`; None while it is open (a probe for
    `wait_for`)."""
    conn.settimeout(0.1)
    try:
        data = conn.recv(4096)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return True
    return True if data == b"" else None


class TgtServer:
    """One userspace iSCSI target (`tgtd`) exporting one leg image as LUN 1 of one target,
    admitted to 127.0.0.1. Its control socket number is private to it (`-C`), so tests of
    other sessions' tgtd are never touched; `kill()` SIGKILLs it (tgtd ignores SIGTERM while
    it has targets) and removes its control socket files."""

    IQN = "iqn.2024-01.test.haagent:{name}"

    def __init__(self, run_dir: Path, name: str, size_mib: int) -> None:
        self.name = name
        self.image = run_dir / f"{name}.img"
        with open(self.image, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        self.port = free_port()
        # Any number no other tgtd uses (tgtd refuses large ones: 60307 is "out of range").
        self.control = 1000 + os.getpid() % 20000
        self.log = run_dir / f"tgtd-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{self.IQN.format(name=self.name)}/1"

    def _adm(self, *args: str) -> None:
        subprocess.run(
            ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{self.port}", "-C", str(self.control)],
            stdin=subprocess.DEVNULL,
            stdout=open(self.log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        sock = Path(f"/var/run/tgtd/socket.{self.control}")
        wait_for("tgtd control socket", lambda: sock.exists() or None, 10, 0.05)
        self._adm(
            "--op", "new", "--mode", "target", "--tid", "1", "-T", self.IQN.format(name=self.name)
        )
        self._adm(
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            str(self.image),
        )
        self._adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "127.0.0.1")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        for suffix in ("", ".lock"):
            Path(f"/var/run/tgtd/socket.{self.control}{suffix}").unlink(missing_ok=True)


def raid1_domain_xml(
    name: str,
    image_dir: Path,
    console: Path,
    legs: list[tuple[str, str, str]],
    error_policy: ErrorPolicy,
) -> str:
    """A TCG guest booting the RAID1 test image, with one network disk per (leg id, target,
    source URI) made by the adapter's own `leg_disk_xml`, and the guest agent's channel.
    `<acpi/>` is what lets the guest take part in PCI hot-plug (attach and detach of a leg)."""
    disks = "\n".join(
        leg_disk_xml(leg, target, parse_leg_source(uri), error_policy) for leg, target, uri in legs
    )
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{image_dir / "vmlinuz"}</kernel>
    <initrd>{image_dir / "initrd.gz"}</initrd>
    <cmdline>console=ttyS0 quiet loglevel=3 panic=-1 no_timer_check</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disks}
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <console type='file'><source path='{console}'/><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Raid1Guest:
    """One running RAID1 test guest on a libvirt connection, driven through its guest agent."""

    def __init__(self, conn: libvirt.virConnect, name: str, console: Path) -> None:
        self.conn = conn
        self.name = name
        self.console = console

    @property
    def dom(self) -> libvirt.virDomain:
        return self.conn.lookupByName(self.name)

    def wait_ready(self, timeout_s: float = BOOT_TIMEOUT_S) -> float:
        """Wait for the console marker and a working agent; return the seconds it took."""
        start = time.monotonic()

        def booted() -> bool | None:
            text = self.console.read_text(errors="replace") if self.console.exists() else ""
            return True if "RAID1GUEST READY" in text else None

        wait_for("guest boot", booted, timeout_s, 0.5)
        wait_for("guest agent", lambda: self.run("true")[0] == 0 or None, 60, 0.5)
        return time.monotonic() - start

    def run(self, command: str, timeout_s: float = 60.0) -> tuple[int, str]:
        return exec_in_guest(self.dom, ["/bin/sh", "-c", command], timeout_s)

    def check(self, command: str, timeout_s: float = 60.0) -> str:
        rc, out = self.run(command, timeout_s)
        if rc != 0:
            raise AssertionError(f"{self.name}: {command!r} exited {rc}: {out}")
        return out

    def state(self) -> tuple[int, int]:
        """libvirt's (state, reason) of the domain, e.g. (VIR_DOMAIN_PAUSED, ..._IOERROR)."""
        state, reason = self.dom.state()
        return state, reason
