"""Two libvirt "hosts" on one machine that can live-migrate a guest between them.

Python version of shared/lab/libvirt-migrate.sh (FINDINGS.md section 1e), built on
tests/helpers/libvirt_host.py (one private libvirtd per mount namespace) and
tests/helpers/netns.py (network namespaces on a bridge).

Host i (1 or 2) = `LibvirtHost` whose daemons run inside network namespace `lab.host(i)` with
address `<subnet>.i` on the lab's bridge. Tests reach each libvirtd through its unix socket
(`uri(i)`); the libvirtds reach each other over TCP (`peer_uri(i)`, what a peer-to-peer
migration's `dest_uri` is), and the two QEMUs stream guest memory over the veth pair. Nothing
listens in the root network namespace.

What migration between two such hosts needs (each item was a failure when missing):

* **Distinct host UUIDs** (`host_uuid` in libvirtd.conf). Without DMI data (none here) each
  libvirtd start invents a random UUID; two daemons that ever agree refuse with "Attempt to
  migrate guest to the same host", and a host's identity should not change on restart.
* **A reachable libvirtd**: `libvirtd --listen` with `listen_tcp = 1`, `listen_tls = 0`,
  `listen_addr = <its address>`, `auth_tcp = "none"` (test only: no TLS, no SASL; the lab's
  addresses exist only inside these namespaces). Peer-to-peer means the *source libvirtd*
  dials `dest_uri`, so the URI must work from inside the source's namespace.
* **A migration address**: `migration_address` (where the incoming QEMU listens) and
  `migration_host` (what the source QEMU is told to connect to) = the host's own address.
  Without them the destination advertises its hostname, which /etc/hosts maps to 127.0.0.1,
  the source's own loopback ("Connection refused"). libvirt refuses 127.0.0.1 in both.
* **Storage both reach that libvirt accepts as shared**: libvirt 9 refuses a disk file on a
  local filesystem ("Migration without shared storage is unsafe") even when both hosts see
  the same file. The guest's disk is therefore a network disk: one `qemu-nbd` serving a qcow2
  image on a unix socket (`--shared=0`: any number of clients), as an NFS/Ceph/iSCSI disk
  would be in production. The adapter never passes VIR_MIGRATE_UNSAFE.
* `dynamic_ownership = 0`: with it on, libvirt chowns images at start/stop and counts users in
  xattrs on the shared file, which goes wrong across hosts (FINDINGS 1e gotcha).

The guest (`guest_xml`) is TCG (`type='qemu'`) with no OS: a 20-line multiboot "kernel" fills
its RAM with pseudo-random data (so a migration moves real pages, not zero pages), writes
`filled` to the serial port (a file: `wait_filled`), then halts.

`down()` (also on a failed `up()`) kills every QEMU and daemon of both hosts by pid, the NBD
server, then deletes the namespaces; it raises if anything survived.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers.libvirt_host import LibvirtHost, LibvirtHostError, make_empty_disk
from tests.helpers.netns import NetnsLab
from tests.helpers.updown import UpDown

__all__ = ["LibvirtdPair"]

# --persistent: keep serving after the last client left; --shared=0: any number of clients
# (the source's and the destination's QEMU both hold the disk during a migration).
_QEMU_NBD = ("qemu-nbd", "--persistent", "--shared=0", "--format=qcow2")

# Multiboot v1 "kernel": fill [2 MiB, LIMIT) with xorshift32 noise, print "filled" on COM1,
# halt. Assembled with `as --32 --defsym LIMIT=...` and linked at 1 MiB.
_FILL_ASM = r"""
        .text
        .globl _start
        .align 4
        .long 0x1BADB002, 0, -0x1BADB002
_start: mov $0x200000, %edi
        mov $0x12345678, %eax
1:      mov %eax, %edx; shl $13, %edx; xor %edx, %eax
        mov %eax, %edx; shr $17, %edx; xor %edx, %eax
        mov %eax, %edx; shl $5,  %edx; xor %edx, %eax
        mov %eax, (%edi)
        add $4, %edi
        cmp $LIMIT, %edi
        jb 1b
        mov $0x3f8, %dx
        mov $msg, %esi
3:      lodsb
        test %al, %al
        jz 2f
        outb %al, %dx
        jmp 3b
2:      hlt
        jmp 2b
msg:    .asciz "filled\n"
"""


class LibvirtdPair(UpDown):
    """Hosts 1 and 2 under `base` (a fresh, short directory: unix socket paths are limited to
    107 bytes), on network namespaces with addresses `<subnet>.1` and `<subnet>.2`."""

    def __init__(self, base: Path, subnet: str = "10.214.0") -> None:
        self.base = base
        self.lab = NetnsLab(hosts=2, subnet=subnet)
        self.shared = base / "shared"
        self.hosts: dict[int, LibvirtHost] = {}
        self._nbd: dict[str, subprocess.Popen[bytes]] = {}

    def host(self, i: int) -> LibvirtHost:
        return self.hosts[i]

    def uri(self, i: int) -> str:
        """Host i's libvirtd for a client in this process (unix socket)."""
        return self.hosts[i].uri

    def peer_uri(self, i: int) -> str:
        """Host i's libvirtd as the other host's libvirtd reaches it: a P2P `dest_uri`."""
        return f"qemu+tcp://{self.lab.ip(i)}/system"

    # --- start / stop ---------------------------------------------------------------------

    def _up(self) -> None:
        """Namespaces, then both hosts' daemons (`up()` cleans up and re-raises on failure)."""
        self.shared.mkdir(parents=True, exist_ok=True)
        self.lab.up()
        for i in (1, 2):
            self.hosts[i] = LibvirtHost(
                self.base / f"h{i}",
                netns=self.lab.host(i),
                listen=True,
                conf_overrides=self._conf(i),
            )
            self.hosts[i].up()

    def _conf(self, i: int) -> dict[str, str]:
        address = self.lab.ip(i)
        return {
            "libvirtd.conf": (
                f'host_uuid = "6d9a0000-0000-4000-8000-0000000000{i:02d}"\n'
                'listen_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\n'
                f'listen_addr = "{address}"\n'
            ),
            "qemu.conf": (
                "dynamic_ownership = 0\n"
                f'migration_address = "{address}"\nmigration_host = "{address}"\n'
            ),
        }

    def down(self) -> None:
        """Kill everything started (idempotent); raises if a process or namespace survived."""
        errors: list[str] = []
        for host in self.hosts.values():
            try:
                host.down()
            except LibvirtHostError as exc:
                errors.append(str(exc))
        for name, server in self._nbd.items():
            if server.poll() is None:
                server.kill()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append(f"qemu-nbd for {name} (pid {server.pid}) survived SIGKILL")
        try:
            self.lab.down()
        except Exception as exc:  # reported with the other leftovers
            errors.append(str(exc))
        if errors:
            raise LibvirtHostError("; ".join(errors))

    # --- the guest --------------------------------------------------------------------------

    def nbd_disk(self, name: str, size_mib: int = 64) -> Path:
        """A qcow2 image served by qemu-nbd on a unix socket in the shared directory; returns
        the socket, once it accepts connections."""
        image = make_empty_disk(self.shared / f"{name}.qcow2", size_mib)
        sock = self.shared / f"{name}.nbd"
        log = (self.shared / f"{name}.nbd.log").open("wb")
        self._nbd[name] = subprocess.Popen(
            [*_QEMU_NBD, "--socket", str(sock), str(image)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while not sock.is_socket():
            if self._nbd[name].poll() is not None or time.monotonic() > deadline:
                log_text = self._nbd_log(name)
                raise LibvirtHostError(f"qemu-nbd for {name} did not come up: {log_text}")
            time.sleep(0.02)
        return sock

    def _nbd_log(self, name: str) -> str:
        return (self.shared / f"{name}.nbd.log").read_text(errors="replace")

    def fill_kernel(self, memory_mib: int) -> Path:
        """The RAM-filling multiboot kernel for a guest of `memory_mib`."""
        elf = self.shared / f"fill{memory_mib}.elf"
        if elf.exists():
            return elf
        source, obj = self.shared / "fill.S", self.shared / f"fill{memory_mib}.o"
        source.write_text(_FILL_ASM)
        limit = (memory_mib - 8) * 1024 * 1024  # below the top: BIOS tables live there
        for command in (
            ["as", "--32", f"--defsym=LIMIT={limit}", "-o", str(obj), str(source)],
            ["ld", "-m", "elf_i386", "-Ttext", "0x100000", "-o", str(elf), str(obj)],
        ):
            subprocess.run(command, check=True, capture_output=True, text=True)
        return elf

    def serial_log(self, name: str) -> Path:
        return self.shared / f"{name}.serial"

    def guest_xml(self, name: str, memory_mib: int = 64) -> str:
        """A TCG guest on an NBD disk, booting the fill kernel, serial port to a file."""
        sock = self.nbd_disk(name)
        kernel = self.fill_kernel(memory_mib)
        return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd'><host transport='unix' socket='{sock}'/></source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{self.serial_log(name)}' append='on'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""

    def wait_filled(self, name: str, timeout_s: float = 60.0) -> float:
        """Wait until the guest's kernel reported its RAM filled; returns the seconds waited."""
        started = time.monotonic()
        log = self.serial_log(name)
        while not (log.exists() and b"filled" in log.read_bytes()):
            if time.monotonic() - started > timeout_s:
                raise LibvirtHostError(f"guest {name} did not fill its RAM in {timeout_s} s")
            time.sleep(0.05)
        return time.monotonic() - started

    # --- faults -----------------------------------------------------------------------------

    def crash(self, i: int, *, guests: bool = True) -> list[int]:
        """Host i crashes as far as its guests are concerned: SIGKILL its libvirtd and every
        QEMU it runs (only libvirtd if not `guests`: the management daemon dies, the guests
        run on). virtlockd/virtlogd stay, so `host(i).restart_libvirtd()` can re-enter the
        namespaces afterwards. Returns the pids killed."""
        host = self.hosts[i]
        pids = [host.libvirtd_pid(), *(host.qemu_pids().values() if guests else ())]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise LibvirtHostError(f"host {i}: {pids} survived SIGKILL")
            time.sleep(0.02)
        return pids


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (killed daemons are reaped late here)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
