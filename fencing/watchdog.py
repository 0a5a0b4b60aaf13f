"""Watchdog self-fencing: the `Watchdog` port over /dev/watchdog, or over a file stand-in.

Safety rule 3: a node that loses its lease stops petting its watchdog, so even a hung agent
gets its host reset. The other nodes rely on that only if `timeout_s` is the timeout the
device really uses, so `DeviceWatchdog.timeout_s` is the value the driver reports back, not the
one asked for, and a device whose timeout can be neither set nor read is refused.

Machines without a watchdog device (the lab, CI, the local demo cluster) get a `FileWatchdog`:
it resets nothing, but it records every pet with a monotonic timestamp so a test or an external
supervisor can see when the pets stopped. `open_watchdog` picks one and says which, loudly,
because running on the stand-in means no hardware backs the self-fence.

Opening a device pings it. An agent restarted after a crash must therefore not open a device
its predecessor left armed before it holds a lease of its own: the open would push the host's
reset past the predecessor's last lease + armed timeout, which is when the others may recover
its guests. `armed_state` tells, without opening anything, whether a countdown runs; the
daemon then defers the open (haagent.daemon.shell). The stand-in keeps its file across agent
restarts for the same reason: `armed`/`pet` in it is a running countdown.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from haagent.ports import Watchdog

log = logging.getLogger(__name__)


def _ioc(direction: int, number: int, size: int) -> int:
    """Linux's _IOC(dir, 'W', nr, size) for the watchdog ioctls (linux/watchdog.h)."""
    return (direction << 30) | (size << 16) | (ord("W") << 8) | number


_IOC_WRITE = 1
_IOC_READ = 2
_INT_SIZE = struct.calcsize("i")
WDIOC_SETTIMEOUT = _ioc(_IOC_READ | _IOC_WRITE, 6, _INT_SIZE)  # _IOWR('W', 6, int)
WDIOC_GETTIMEOUT = _ioc(_IOC_READ, 7, _INT_SIZE)  # _IOR('W', 7, int)
_WATCHDOG_INFO = struct.Struct("II32s")  # struct watchdog_info: options, firmware, identity
WDIOC_GETSUPPORT = _ioc(_IOC_READ, 0, _WATCHDOG_INFO.size)  # _IOR('W', 0, watchdog_info)
WDIOF_MAGICCLOSE = 0x0100  # the driver honours the magic 'V' (unless built with nowayout)

# Writing 'V' just before close tells a driver without "nowayout" to disarm instead of
# resetting the machine ("magic close").
MAGIC_CLOSE = b"V"
PET_BYTE = b"\0"


class WatchdogError(RuntimeError):
    """The watchdog cannot be opened, configured or petted (an expected operating error)."""


class DescribedWatchdog(Watchdog, Protocol):
    """A `Watchdog` that can say what backs it (for logs and the status API)."""

    @property
    def description(self) -> str: ...


class DeviceWatchdog:
    """A kernel watchdog device (/dev/watchdog): opening it arms it.

    `timeout_s` is the timeout in force after opening: the driver's answer to
    WDIOC_SETTIMEOUT (drivers round to what the hardware supports; the request is rounded up to
    whole seconds first), or WDIOC_GETTIMEOUT if setting is unsupported. If neither works the
    constructor raises `WatchdogError` instead of guessing, and disarms the device again.
    `pet()` writes one byte; `close()` writes the magic 'V' then closes, which disarms the
    device unless its driver was built with nowayout. `keep_armed`: if configuring fails, close
    without the magic 'V' (a device a crashed predecessor armed must keep counting down).
    Call `close()` only on a clean shutdown with no guest running; a crash leaves the device
    armed, which is the point.
    """

    def __init__(
        self, path: str = "/dev/watchdog", timeout_s: float = 60.0, keep_armed: bool = False
    ) -> None:
        self.path = path
        requested_s = max(1, math.ceil(timeout_s))
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise WatchdogError(f"cannot open watchdog {path}: {exc.strerror or exc}") from exc
        try:
            self.timeout_s: float = float(self._configure(self._fd, requested_s))
        except WatchdogError:
            if keep_armed:
                # Re-opened after a predecessor armed it: guests may run, so the countdown
                # must go on (a plain close leaves the device armed).
                fd, self._fd = self._fd, None
                os.close(fd)
            else:
                self.close()
            raise
        log.info("watchdog %s armed, timeout %g s", path, self.timeout_s)

    def _configure(self, fd: int, requested_s: int) -> int:
        try:
            answer = fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", requested_s))
            actual_s: int = struct.unpack("i", answer)[0]
            if actual_s != requested_s:
                log.warning(
                    "watchdog %s: asked for %d s, driver uses %d s",
                    self.path,
                    requested_s,
                    actual_s,
                )
            return actual_s
        except OSError as set_exc:
            log.warning(
                "watchdog %s: cannot set the timeout (%s); reading it instead",
                self.path,
                set_exc.strerror or set_exc,
            )
        try:
            answer = fcntl.ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0))
        except OSError as get_exc:
            raise WatchdogError(
                f"watchdog {self.path}: its timeout can be neither set nor read"
                f" ({get_exc.strerror or get_exc})"
            ) from get_exc
        current_s: int = struct.unpack("i", answer)[0]
        return current_s

    @property
    def description(self) -> str:
        return f"device {self.path} (timeout {self.timeout_s:g} s)"

    def releasable(self, sysfs: Path | None = None) -> tuple[bool, str]:
        """Can a magic close disarm this device (`cluster disarm`)? Only when the driver
        says it supports the magic close (WDIOC_GETSUPPORT) and its `nowayout` is known to be
        off (/sys/class/watchdog/*/nowayout): otherwise a close would leave it counting down
        and reset the host, so the caller keeps petting it instead. Never raises."""
        if self._fd is None:
            return False, "closed"
        try:
            answer = fcntl.ioctl(self._fd, WDIOC_GETSUPPORT, bytes(_WATCHDOG_INFO.size))
            options = _WATCHDOG_INFO.unpack(answer)[0]
        except OSError as exc:
            return False, f"its features cannot be read ({exc.strerror or exc})"
        if not options & WDIOF_MAGICCLOSE:
            return False, "its driver does not support the magic close"
        try:
            entry = _sysfs_entry(self.path, sysfs or SYSFS_WATCHDOG)
            nowayout = (entry / "nowayout").read_text().strip() if entry else "?"
        except OSError:
            nowayout = "?"
        if nowayout != "0":
            return False, f"its nowayout is {'on' if nowayout == '1' else 'unknown'}"
        return True, "magic close"

    def pet(self) -> None:
        """Restart the device's countdown. Raises `WatchdogError` if the write fails and
        RuntimeError after `close()` (a programmer error)."""
        if self._fd is None:
            raise RuntimeError(f"watchdog {self.path} petted after close")
        try:
            os.write(self._fd, PET_BYTE)
        except OSError as exc:
            raise WatchdogError(f"cannot pet watchdog {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        """Magic close: disarm and release the device. Idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.write(fd, MAGIC_CLOSE)
        except OSError as exc:
            log.error("watchdog %s: magic close failed (%s); it may fire", self.path, exc)
        finally:
            os.close(fd)
        log.info("watchdog %s disarmed", self.path)


class FileWatchdog:
    """A stand-in for machines without a watchdog device; it resets nothing.

    The file always holds one line, `<state> <monotonic_s> <timeout_s>`, replaced atomically:
    `armed` when created, `pet` on every pet, `closed` after `close()`. `monotonic_s` is
    CLOCK_MONOTONIC, which every process on the host shares, so a supervisor compares it with
    its own `time.monotonic()`: a `pet` line older than `timeout_s` means the watchdog would
    have fired. Errors writing the file raise `WatchdogError`.
    """

    def __init__(self, path: str | Path, timeout_s: float) -> None:
        self.path = Path(path)
        self.timeout_s: float = timeout_s
        self._closed = False
        self._write("armed")

    @property
    def description(self) -> str:
        return f"stand-in file {self.path} (timeout {self.timeout_s:g} s, resets nothing)"

    def _write(self, state: str) -> None:
        line = f"{state} {time.monotonic():.6f} {self.timeout_s:g}\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            if state == "armed":  # once: a pet is only a write and a rename
                self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(line)
            tmp.replace(self.path)
        except OSError as exc:
            raise WatchdogError(f"cannot write watchdog stand-in {self.path}: {exc}") from exc

    def pet(self) -> None:
        """Record a pet. RuntimeError after `close()` (a programmer error)."""
        if self._closed:
            raise RuntimeError(f"watchdog stand-in {self.path} petted after close")
        self._write("pet")

    def releasable(self) -> tuple[bool, str]:
        """The stand-in models a device with the magic close and nowayout off."""
        return not self._closed, "stand-in"

    def close(self) -> None:
        """Record a clean disarm. Idempotent."""
        if self._closed:
            return
        self._write("closed")
        self._closed = True


def read_standin(path: str | Path) -> tuple[str, float, float]:
    """Parse a `FileWatchdog` file: (state, monotonic_s, timeout_s). Raises ValueError or
    OSError on a missing or malformed file."""
    state, at_s, timeout_s = Path(path).read_text().split()
    return state, float(at_s), float(timeout_s)


SYSFS_WATCHDOG = Path("/sys/class/watchdog")
LEGACY_DEVICE = "10:130"  # /dev/watchdog, the misc device: the first watchdog, watchdog0


@dataclass(frozen=True)
class ArmedState:
    """Whether a countdown runs on the watchdog now, learnt without opening it (opening a Linux
    watchdog device pings it). `armed` is True when unknown: then only a holder of a valid
    lease may open it. `timeout_s`: the running countdown's timeout, None when unknown."""

    armed: bool
    timeout_s: float | None
    why: str


def armed_state(
    device: str | None, standin_path: str | Path, sysfs: Path = SYSFS_WATCHDOG
) -> ArmedState:
    """Is the watchdog `open_watchdog` would pick armed now (by a predecessor that died
    without disarming it, or that cannot be known)? Never opens or writes anything.

    A device: `state` and `timeout` of its /sys/class/watchdog entry (matched by device
    number; /dev/watchdog is watchdog0). The stand-in: its file (`armed`/`pet` = armed,
    `closed` or no file = not armed)."""
    if device is not None and os.path.exists(device):
        return _device_armed_state(device, sysfs)
    try:
        state, _, timeout_s = read_standin(standin_path)
    except FileNotFoundError:
        return ArmedState(False, None, f"no stand-in file {standin_path}")
    except (OSError, ValueError) as exc:
        return ArmedState(True, None, f"stand-in {standin_path} unreadable ({exc})")
    if state == "closed":
        return ArmedState(False, timeout_s, "stand-in disarmed by a clean shutdown")
    return ArmedState(True, timeout_s, f"stand-in {standin_path} is {state}")


def _sysfs_entry(device: str, sysfs: Path) -> Path | None:
    """The /sys/class/watchdog entry of `device` (by device number), None if not found.
    Raises OSError."""
    rdev = os.stat(device).st_rdev
    number = f"{os.major(rdev)}:{os.minor(rdev)}"
    if number == LEGACY_DEVICE:
        return sysfs / "watchdog0"
    for candidate in sorted(sysfs.iterdir()):
        if (candidate / "dev").read_text().strip() == number:
            return candidate
    return None


def _device_armed_state(device: str, sysfs: Path) -> ArmedState:
    try:
        entry = _sysfs_entry(device, sysfs)
        if entry is None:
            return ArmedState(True, None, f"no {sysfs} entry for {device}")
        state = (entry / "state").read_text().strip()
        timeout_s = float((entry / "timeout").read_text().strip())
    except (OSError, ValueError) as exc:
        return ArmedState(True, None, f"state of {device} unknown ({exc})")
    if state == "inactive":
        return ArmedState(False, timeout_s, f"{device} is inactive")
    return ArmedState(True, timeout_s, f"{device} is {state}")


def open_watchdog(
    device: str | None, timeout_s: float, standin_path: str | Path, keep_armed: bool = False
) -> DescribedWatchdog:
    """The device watchdog when `device` is given and exists, else the file stand-in.

    A device that exists but cannot be opened or configured (busy: another process such as
    sbd or systemd holds it; no way to learn its timeout) raises `WatchdogError`: silently
    falling back would make the cluster count on a self-fence that nothing enforces. The
    choice is logged, as a warning for the stand-in, and readable from `description`.
    """
    if device is not None and os.path.exists(device):
        watchdog: DescribedWatchdog = DeviceWatchdog(device, timeout_s, keep_armed)
        log.info("watchdog: using %s", watchdog.description)
        return watchdog
    why = "no watchdog device configured" if device is None else f"{device} does not exist"
    watchdog = FileWatchdog(standin_path, timeout_s)
    log.warning("watchdog: %s; using %s", why, watchdog.description)
    return watchdog
