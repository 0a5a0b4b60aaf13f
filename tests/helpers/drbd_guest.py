"""Real DRBD 8.4 for the tests: TCG guests booted from Debian's kernel (see tests/drbd_guest/).

The host kernel cannot load DRBD; a guest kernel can. Each `DrbdGuest` is one QEMU process
(TCG, 1 vCPU, 256 MiB) with a 16 MiB virtio disk for DRBD's backing device, a network link to
the other guest (a QEMU socket netdev on 127.0.0.1), the host's root file system read-only over
9p (so the guest can run this checkout's Python code under `chroot /host`) and a virtio-serial
command channel (`run`). The image is built once and cached in `.cache/drbd-guest/` (ignored
by git, see tests/helpers/guest_image.py); `ensure_image()` rebuilds it only when the build
script or the guest's /init changed.

Everything started here is stopped by `close()` (SIGKILL of the QEMU pid we started), which
the fixtures call even when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import guest_image
from tests.helpers.guest_image import REPO

__all__ = ["IMAGE_DIR", "REPO", "DrbdGuest", "GuestError", "ensure_image", "free_port"]

IMAGE_DIR = guest_image.CACHE / "drbd-guest"
BOOT_TIMEOUT_S = 400.0  # measured 40-160 s on a loaded 2-core host


class GuestError(RuntimeError):
    pass


def ensure_image() -> Path:
    """Build (or reuse) the guest kernel and initramfs; return their folder."""
    return guest_image.ensure_image("drbd_guest", IMAGE_DIR.name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? Read from /proc so that no probe connects
    (QEMU's socket netdev would take the probe for its peer)."""
    suffix = f":{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1].endswith(suffix) and fields[3] == "0A":
            return True
    return False


class DrbdGuest:
    """One TCG guest `guest<gid>` at 10.99.1.<gid>, driven through its command channel."""

    def __init__(self, gid: int, run_dir: Path, image_dir: Path = IMAGE_DIR) -> None:
        self.gid = gid
        self.name = f"guest{gid}"
        self.address = f"10.99.1.{gid}"
        self.run_dir = run_dir
        self.image_dir = image_dir
        self.console = run_dir / f"{self.name}.console"
        # A unix socket path must stay short (108 bytes): keep it out of pytest's tmp_path.
        self._sock_dir = Path(tempfile.mkdtemp(prefix=f"drbd-{self.name}-"))
        self.cmd_sock = self._sock_dir / "cmd.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: socket.socket | None = None
        self._buf = b""
        self._next_id = 1

    def start(self, net_port: int, listen: bool) -> None:
        disk = self.run_dir / f"{self.name}.img"
        with open(disk, "wb") as f:
            f.truncate(16 * 1024 * 1024)
        net = f"listen=127.0.0.1:{net_port}" if listen else f"connect=127.0.0.1:{net_port}"
        argv = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-smp",
            "1",
            "-m",
            "256",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-kernel",
            str(self.image_dir / "vmlinuz"),
            "-initrd",
            str(self.image_dir / "initrd.gz"),
            # no_timer_check: on a loaded host the slow TCG guest fails the kernel's IO-APIC
            # timer check and panics ("IO-APIC + timer doesn't work!"); seen here at load 30.
            "-append",
            f"console=ttyS0 quiet loglevel=3 panic=-1 no_timer_check gid={self.gid}",
            "-serial",
            f"file:{self.console}",
            "-drive",
            f"file={disk},if=virtio,format=raw",
            "-netdev",
            f"socket,id=n0,{net}",
            "-device",
            f"virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:00:01:0{self.gid}",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-device",
            "virtio-serial-pci",
            "-chardev",
            f"socket,id=cmd,path={self.cmd_sock},server=on,wait=off",
            "-device",
            "virtserialport,chardev=cmd,name=cmd",
        ]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=open(self.run_dir / f"{self.name}.qemu.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        if listen:
            deadline = time.monotonic() + 30
            while not _listening(net_port):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise GuestError(f"{self.name}: QEMU did not listen on {net_port}")
                time.sleep(0.05)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.run_dir / f"{self.name}.qemu.log").read_text(errors="replace")
            raise GuestError(f"{self.name}: QEMU exited ({self.proc.returncode}): {log[-2000:]}")

    def wait_ready(self, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        marker = f"GUEST{self.gid} READY"
        while True:
            self._check_alive()
            text = self.console.read_text(errors="replace") if self.console.exists() else ""
            if marker in text:
                break
            if time.monotonic() > deadline:
                raise GuestError(f"{self.name} did not boot in {timeout_s}s: {text[-2000:]}")
            time.sleep(0.2)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(self.cmd_sock))
        self._conn = conn
        rc, out = self.run("true", timeout_s=60)
        if rc != 0:
            raise GuestError(f"{self.name}: command channel answered {rc}: {out}")

    def run(self, command: str, timeout_s: float = 60.0) -> tuple[int, str]:
        """Run one shell command in the guest; return (exit status, stdout+stderr)."""
        if "\n" in command:
            raise ValueError("one line per command")
        if self._conn is None:
            raise GuestError(f"{self.name}: not booted")
        rid = self._next_id
        self._next_id += 1
        self._conn.sendall(f"{rid} {command}\n".encode())
        deadline = time.monotonic() + timeout_s
        header = f"R {rid} ".encode()
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0 and self._buf.startswith(header):
                _, _, rc_s, n_s = self._buf[:nl].decode().split()
                n = int(n_s)
                if len(self._buf) >= nl + 1 + n:
                    out = self._buf[nl + 1 : nl + 1 + n]
                    self._buf = self._buf[nl + 1 + n :]
                    return int(rc_s), out.decode(errors="replace")
            elif nl >= 0:
                raise GuestError(f"{self.name}: unexpected channel data {self._buf[:200]!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(f"{self.name}: {command!r} did not finish in {timeout_s}s")
            self._check_alive()
            self._conn.settimeout(min(left, 1.0))
            try:
                chunk = self._conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise GuestError(f"{self.name}: command channel closed")
            self._buf += chunk

    def check(self, command: str, timeout_s: float = 60.0) -> str:
        rc, out = self.run(command, timeout_s)
        if rc != 0:
            raise GuestError(f"{self.name}: {command!r} exited {rc}: {out}")
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for p in self._sock_dir.iterdir():
            p.unlink()
        self._sock_dir.rmdir()
