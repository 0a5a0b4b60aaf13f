"""Mount and power-cycle `tests.helpers.powerloss_fs` file systems from a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fuse_usable() -> str | None:
    """Why FUSE cannot be used here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if subprocess.run(["which", "fusermount3"], check=False, capture_output=True).returncode != 0:
        return "no fusermount3 (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy unusable: {exc}"
    return None


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


class PowerLossMount:
    """One power-loss file system at `mountpoint`; its durable state lives in `state_file`."""

    def __init__(self, mountpoint: Path, state_file: Path) -> None:
        self.mountpoint = mountpoint
        self.state_file = state_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = state_file.with_suffix(".log")

    def mount(self, timeout_s: float = 10.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        # A file, not a pipe: a pipe nobody reads would block the file system once full.
        self.log_file = self.state_file.with_suffix(".log")
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.helpers.powerloss_fs",
                    str(self.mountpoint),
                    str(self.state_file),
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"powerloss_fs exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"powerloss_fs did not mount {self.mountpoint} in time")
            time.sleep(0.02)

    def log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def set_capacity(self, nbytes: int) -> None:
        os.setxattr(self.mountpoint, "user.capacity", str(nbytes).encode())

    def power_loss(self, timeout_s: float = 20.0) -> None:
        """Unmount (what was not fsynced is lost) and wait for the state file to be written.
        Whatever used the mount must be dead already."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = subprocess.run(
                ["fusermount3", "-u", str(self.mountpoint)],
                check=False,
                capture_output=True,
                text=True,
            )
            if done.returncode == 0 or not is_mounted(self.mountpoint):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot unmount {self.mountpoint}: {done.stderr.strip()}")
            time.sleep(0.05)
        assert self.proc is not None
        try:
            try:
                self.proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                # A mount namespace created elsewhere while we were mounted (ip netns exec,
                # unshare) keeps a copy of the mount, and with it the FUSE connection: the
                # daemon never sees the unmount. libfuse ends its loop on SIGTERM.
                self.proc.terminate()
                self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            raise RuntimeError(
                f"powerloss_fs still running {timeout_s} s after the unmount: {self.log_tail()}"
            ) from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"powerloss_fs failed: {self.log_tail()}")
        self.proc = None

    def reboot(self) -> None:
        self.power_loss()
        self.mount()

    def cleanup(self) -> None:
        if is_mounted(self.mountpoint):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True
            )
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
