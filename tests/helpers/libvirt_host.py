"""A private libvirt "host" for integration tests: its own mount namespace and daemons.

Python version of shared/lab/libvirt-host.sh. One `LibvirtHost` is one simulated hypervisor:
a mount namespace in which `/run/libvirt`, `/var/lib/libvirt`, `/etc/libvirt`,
`/var/cache/libvirt` and `/var/log/libvirt` are bind-mounted from private directories under
`base`, running its own virtlogd, virtlockd and libvirtd. The daemon's socket lives in a real
directory (`base/run/libvirt-sock`), so the test process reaches it from the root namespace
through `qemu:///system?socket=...`.

Why each detail is there (see shared/lab/FINDINGS.md section 1):

* `-p` pid files: by default the daemons write pid files into `/run`, outside the bind mounts,
  so two hosts would clash; we also need them to kill exactly our processes.
* `cgroup_controllers = [ ]`: otherwise two hosts that both start a domain as ID 1 put both
  QEMU processes into the same cgroup.
* `user = "root"`: the private directories live under pytest's `tmp_path`, whose parent is
  mode 0700, so libvirt's unprivileged `libvirt-qemu` user could not open the disk image.
* `/dev/kvm` made `root:kvm 0660` (what udev would do): with `0600 root`, libvirtd keeps
  re-probing QEMU and every define takes ~48 s.
* Optional, for hosts that migrate to each other (tests/helpers/libvirtd_pair.py): `netns`
  runs the daemons (and so their QEMU children) inside that network namespace, `listen` starts
  libvirtd with `--listen` (its TCP listener is configured through `conf_overrides`, appended
  to the named files under etc/ at the first `prepare`).
* Teardown never kills by name. It kills the QEMU and daemon pids from the pid files, then
  every process still inside this host's mount namespace (identified by its inode, recorded at
  start), and checks that none is left. The namespace disappears with its last process.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LibvirtHost",
    "LibvirtHostError",
    "grant_kvm_to_group",
    "make_empty_disk",
    "qemu_guest_xml",
]

DAEMONS = ("virtlogd", "virtlockd", "libvirtd")

# Private directory name -> the libvirt directory it replaces inside the namespace.
BIND_MOUNTS = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "etc": "/etc/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}

UNSHARE = ("unshare", "--mount", "--propagation", "private", "--")

# Linux limits a unix socket path to 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107

QEMU_CONF_OVERRIDES = """
# --- haagent test host overrides ---
cgroup_controllers = [ ]
lock_manager = "lockd"
namespaces = [ ]
user = "root"
group = "root"
"""


class LibvirtHostError(RuntimeError):
    """The host could not be started or torn down; the message carries the daemons' logs."""


def grant_kvm_to_group() -> None:
    """Give /dev/kvm udev's usual `root:kvm 0660`, if the device and group exist."""
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return
    try:
        gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return
    st = kvm.stat()
    if st.st_gid != gid:
        os.chown(kvm, -1, gid)
    if st.st_mode & 0o777 != 0o660:
        os.chmod(kvm, 0o660)


def make_empty_disk(path: Path, size_mib: int = 64) -> Path:
    """An empty qcow2 image: with nothing to boot, SeaBIOS idles ("No bootable device")."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"],
        check=True,
        capture_output=True,
        text=True,
    )
    return path


def qemu_guest_xml(name: str, disk: Path, memory_mib: int = 64) -> str:
    """A minimal TCG guest (`type='qemu'`): one vCPU, the disk, a serial pty, no balloon."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _read_pid(path: Path) -> int | None:
    """A pid file's number; libvirt's pid files have no trailing newline."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _mount_ns(pid: int) -> str | None:
    """The mount namespace of `pid` ("mnt:[4026532...]"), None if it is gone or a zombie."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _pids_in_namespace(namespace: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _mount_ns(int(entry)) == namespace:
            found.append(int(entry))
    return found


def _tail(path: Path, max_chars: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return text[-max_chars:] if text else "(empty)"


@dataclass
class LibvirtHost:
    """One private libvirt host rooted at `base` (a fresh directory, e.g. under tmp_path)."""

    base: Path
    startup_timeout_s: float = 30.0
    netns: str | None = None
    listen: bool = False
    conf_overrides: Mapping[str, str] = field(default_factory=dict)
    namespace: str | None = field(default=None, init=False)
    daemon_pids: dict[str, int] = field(default_factory=dict, init=False)
    startup_s: float | None = field(default=None, init=False)

    def dir(self, name: str) -> Path:
        return self.base / name

    @property
    def socket_path(self) -> Path:
        return self.dir("run") / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket_path}"

    def pid_file(self, daemon: str) -> Path:
        return self.dir("run") / f"{daemon}.pid"

    # --- start ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the private directories and the config (once; later calls keep it)."""
        for name in BIND_MOUNTS:
            self.dir(name).mkdir(parents=True, exist_ok=True)
        etc = self.dir("etc")
        if (etc / "qemu.conf").exists():
            return
        subprocess.run(["cp", "-a", "/etc/libvirt/.", str(etc)], check=True)
        # No inherited domain definitions, autostart links or autostarted networks.
        for xml in (etc / "qemu").glob("*.xml"):
            xml.unlink()
        for autostart in (etc / "qemu" / "autostart", etc / "qemu" / "networks" / "autostart"):
            if autostart.is_dir():
                for link in autostart.iterdir():
                    link.unlink()
        for sub in ("qemu", "images", "lockd"):
            (self.dir("lib") / sub).mkdir(exist_ok=True)
        with (etc / "qemu.conf").open("a") as conf:
            conf.write(QEMU_CONF_OVERRIDES)
        # Log files (paths inside the namespace) so that a failure can show what went wrong.
        for daemon in DAEMONS:
            with (etc / f"{daemon}.conf").open("a") as conf:
                conf.write(f'\nlog_outputs = "3:file:/var/log/libvirt/{daemon}.log"\n')
        for file_name, text in self.conf_overrides.items():
            with (etc / file_name).open("a") as conf:
                conf.write(f"\n# --- test overrides ---\n{text}\n")

    def _libvirtd_args(self) -> list[str]:
        return ["libvirtd", "-d", *(["--listen"] if self.listen else [])]

    def up(self) -> float:
        """Start the daemons and wait until libvirtd accepts connections; returns the seconds
        that took. Raises LibvirtHostError with the logs if it does not come up in time."""
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise LibvirtHostError(f"socket path too long for a unix socket: {self.socket_path}")
        grant_kvm_to_group()
        self.prepare()
        for mountpoint in BIND_MOUNTS.values():
            # Bind mounts need their mountpoints to exist in the root namespace.
            Path(mountpoint).mkdir(parents=True, exist_ok=True)
        lines = [
            f"mount --bind {shlex.quote(str(self.dir(name)))} {target}"
            for name, target in BIND_MOUNTS.items()
        ]
        lines += [f"{d} -d -p {shlex.quote(str(self.pid_file(d)))}" for d in DAEMONS[:-1]]
        lines.append(shlex.join([*self._libvirtd_args(), "-p", str(self.pid_file("libvirtd"))]))
        netns = ("ip", "netns", "exec", self.netns) if self.netns else ()
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        with (self.dir("log") / "unshare.out").open("w") as out:
            try:
                result = subprocess.run(
                    [*netns, *UNSHARE, "/bin/sh", "-ec", "\n".join(lines)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=self.startup_timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                self._record_pids()
                raise LibvirtHostError(self._failure("the start-up script timed out")) from None
        self._record_pids()
        if result.returncode != 0:
            raise LibvirtHostError(self._failure(f"start-up script exited {result.returncode}"))
        while not self._accepts_connections():
            if time.monotonic() > deadline:
                raise LibvirtHostError(
                    self._failure(f"no libvirtd socket after {self.startup_timeout_s} s")
                )
            if "libvirtd" in self.daemon_pids and _mount_ns(self.daemon_pids["libvirtd"]) is None:
                raise LibvirtHostError(self._failure("libvirtd exited"))
            time.sleep(0.02)
            self._record_pids()
        self.startup_s = time.monotonic() - started
        return self.startup_s

    def _record_pids(self) -> None:
        for daemon in DAEMONS:
            pid = _read_pid(self.pid_file(daemon))
            if pid is not None:
                self.daemon_pids[daemon] = pid
                if self.namespace is None:
                    self.namespace = _mount_ns(pid)

    def _accepts_connections(self) -> bool:
        if not self.socket_path.is_socket():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                return False
        return True

    # --- inspection -------------------------------------------------------------------------

    def qemu_pids(self) -> dict[str, int]:
        """Running QEMU processes by domain name, from libvirt's pid files."""
        pids = {}
        for pid_file in (self.dir("run") / "qemu").glob("*.pid"):
            if pid_file.stem == "driver":
                continue  # libvirtd's own lock file for the QEMU driver
            pid = _read_pid(pid_file)
            if pid is not None and self._ours(pid):
                pids[pid_file.stem] = pid
        return pids

    def processes(self) -> list[int]:
        """Every live process in this host's mount namespace."""
        return _pids_in_namespace(self.namespace) if self.namespace else []

    def _ours(self, pid: int) -> bool:
        # A pid from a stale file may have been reused by an unrelated process.
        return self.namespace is not None and _mount_ns(pid) == self.namespace

    def logs(self) -> str:
        """The start-up output and the daemons' and guests' logs, for failure messages."""
        parts = [f"--- unshare output ---\n{_tail(self.dir('log') / 'unshare.out')}"]
        for daemon in DAEMONS:
            parts.append(f"--- {daemon}.log ---\n{_tail(self.dir('log') / f'{daemon}.log')}")
        for guest_log in sorted((self.dir("log") / "qemu").glob("*.log")):
            parts.append(f"--- qemu/{guest_log.name} ---\n{_tail(guest_log)}")
        return "\n".join(parts)

    def _failure(self, what: str) -> str:
        return f"libvirt host {self.base}: {what}\n{self.logs()}"

    # --- faults -----------------------------------------------------------------------------

    def libvirtd_pid(self) -> int:
        self._record_pids()
        pid = self.daemon_pids.get("libvirtd")
        if pid is None or not self._ours(pid):
            raise LibvirtHostError(f"libvirt host {self.base}: libvirtd is not running")
        return pid

    def stop_libvirtd(self, timeout_s: float = 10.0) -> None:
        """SIGTERM libvirtd alone (guests and the other daemons keep running) and wait until
        it is gone, as after a crash of the management daemon."""
        pid = self.libvirtd_pid()
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self._ours(pid):
            if time.monotonic() > deadline:
                raise LibvirtHostError(self._failure(f"libvirtd {pid} ignored SIGTERM"))
            time.sleep(0.02)

    def restart_libvirtd(self) -> float:
        """Start libvirtd again inside this host's namespace (entered through virtlockd);
        returns the seconds until it accepted connections."""
        anchor = self.daemon_pids.get("virtlockd")
        if anchor is None or not self._ours(anchor):
            raise LibvirtHostError(f"libvirt host {self.base}: virtlockd is gone")
        pid_file = str(self.pid_file("libvirtd"))
        namespaces = ["-m", *(["-n"] if self.netns else [])]
        started = time.monotonic()
        subprocess.run(
            [
                "nsenter",
                "-t",
                str(anchor),
                *namespaces,
                "--",
                *self._libvirtd_args(),
                "-p",
                pid_file,
            ],
            check=True,
            timeout=self.startup_timeout_s,
        )
        deadline = started + self.startup_timeout_s
        while not self._accepts_connections():
            if time.monotonic() > deadline:
                raise LibvirtHostError(self._failure("libvirtd did not come back"))
            time.sleep(0.02)
        self._record_pids()
        return time.monotonic() - started

    def signal_libvirtd(self, signum: signal.Signals) -> None:
        """E.g. SIGSTOP/SIGCONT to make libvirtd hang and recover."""
        self._signal(self.libvirtd_pid(), signum)

    # --- stop -------------------------------------------------------------------------------

    def down(self, timeout_s: float = 10.0) -> None:
        """Kill every process this host started (QEMU first, then the daemons, then anything
        left in the namespace) and wait until they are gone. Safe to call more than once and
        after a failed `up`. Raises LibvirtHostError if a process survives."""
        self._record_pids()
        for qemu_pid in self.qemu_pids().values():
            self._signal(qemu_pid, signal.SIGKILL)
        for daemon in reversed(DAEMONS):
            daemon_pid = self.daemon_pids.get(daemon)
            if daemon_pid is not None and self._ours(daemon_pid):
                self._signal(daemon_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s / 2
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.processes():
            self._signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s / 2
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = self.processes()
        if survivors:
            raise LibvirtHostError(f"libvirt host {self.base}: processes survived: {survivors}")

    @staticmethod
    def _signal(pid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def __enter__(self) -> LibvirtHost:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.down()
