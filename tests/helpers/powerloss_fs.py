"""A FUSE file system that forgets everything not fsynced when the power goes.

    python -m tests.helpers.powerloss_fs MOUNTPOINT STATE_FILE

Files and directories live in this process's memory. Each file has its current bytes and its
durable bytes; each directory its current entries and its durable entries. `fsync` on a file
makes its bytes durable; `fsync` on a directory makes its entries (creates, renames, unlinks)
durable. Nothing else does: not close, not flush, not a rename. That is the strict POSIX
contract (ext4 is usually kinder, which hides bugs rather than proving their absence).

A power loss is: SIGKILL whatever uses the mount, unmount it (the kernel flushes its dirty pages
to us: they land in "current" and are lost too), and on unmount this process writes only the
durable state to STATE_FILE and exits. Mounting again with the same STATE_FILE is the reboot.
The kernel's page cache goes with the unmount, so nothing stale is read afterwards.

`setxattr(MOUNTPOINT, "user.capacity", b"BYTES")` sets the size of the disk: `statfs` reports
what is left and a write past it fails with ENOSPC (b"0" means unlimited, the default).

Test code only: it keeps a whole file system in memory and serves one thread.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import pickle
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import mfusepy as fuse

BLOCK = 4096


@dataclass
class Inode:
    is_dir: bool
    mode: int
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    entries: dict[str, int] = field(default_factory=dict)
    durable_entries: dict[str, int] = field(default_factory=dict)
    mtime: float = field(default_factory=time.time)


class PowerLossFs(fuse.Operations):
    use_ns = False

    def __init__(self, state_file: str) -> None:
        self.state_file = state_file
        self.capacity = 0
        self.inodes: dict[int, Inode] = {}
        self.next_ino = 2
        if os.path.exists(state_file):
            with open(state_file, "rb") as f:
                saved: dict[int, Inode] = pickle.load(f)
            for ino, node in saved.items():
                node.data = bytearray(node.durable)
                node.entries = dict(node.durable_entries)
                self.inodes[ino] = node
            self.next_ino = max(self.inodes) + 1
        else:
            self.inodes[1] = Inode(True, stat.S_IFDIR | 0o755)

    # -- state ---------------------------------------------------------------------------

    def save_durable(self) -> None:
        """Keep what a power loss would: the durable namespace from the root, durable bytes."""
        keep: dict[int, Inode] = {}
        todo = [1]
        while todo:
            ino = todo.pop()
            if ino in keep:
                continue
            node = self.inodes[ino]
            keep[ino] = Inode(
                node.is_dir,
                node.mode,
                durable=node.durable,
                durable_entries=dict(node.durable_entries),
                mtime=node.mtime,
            )
            todo.extend(node.durable_entries.values())
        tmp = self.state_file + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(keep, f)
        os.replace(tmp, self.state_file)

    def used(self) -> int:
        return sum(len(n.data) for n in self.inodes.values())

    def lookup(self, path: str) -> tuple[int, Inode]:
        ino = 1
        for part in [p for p in path.split("/") if p]:
            node = self.inodes[ino]
            if not node.is_dir:
                raise fuse.FuseOSError(errno.ENOTDIR)
            if part not in node.entries:
                raise fuse.FuseOSError(errno.ENOENT)
            ino = node.entries[part]
        return ino, self.inodes[ino]

    def parent(self, path: str) -> tuple[Inode, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        _, node = self.lookup(head or "/")
        if not node.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return node, name

    def new(self, path: str, is_dir: bool, mode: int) -> int:
        parent, name = self.parent(path)
        if name in parent.entries:
            raise fuse.FuseOSError(errno.EEXIST)
        ino = self.next_ino
        self.next_ino += 1
        self.inodes[ino] = Inode(is_dir, mode)
        parent.entries[name] = ino
        parent.mtime = time.time()
        return ino

    # -- operations ----------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        ino, node = self.lookup(path)
        size = len(node.data) if not node.is_dir else 4096
        return {
            "st_ino": ino,
            "st_mode": node.mode,
            "st_nlink": 2 if node.is_dir else 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_mtime": node.mtime,
            "st_ctime": node.mtime,
            "st_atime": node.mtime,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        _, node = self.lookup(path)
        return [".", "..", *node.entries]

    def mkdir(self, path: str, mode: int) -> int:
        self.new(path, True, stat.S_IFDIR | mode)
        return 0

    def rmdir(self, path: str) -> int:
        _, node = self.lookup(path)
        if node.entries:
            raise fuse.FuseOSError(errno.ENOTEMPTY)
        parent, name = self.parent(path)
        del parent.entries[name]
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return self.new(path, False, stat.S_IFREG | (mode & 0o7777))

    def open(self, path: str, flags: int) -> int:
        ino, _ = self.lookup(path)
        return ino

    def opendir(self, path: str) -> int:
        ino, _ = self.lookup(path)
        return ino

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return bytes(self.inodes[fh].data[offset : offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        node = self.inodes[fh]
        grow = max(0, offset + len(data) - len(node.data))
        if self.capacity and self.used() + grow > self.capacity:
            raise fuse.FuseOSError(errno.ENOSPC)
        if offset > len(node.data):
            node.data.extend(b"\0" * (offset - len(node.data)))
        node.data[offset : offset + len(data)] = data
        node.mtime = time.time()
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        node = self.inodes[fh] if fh else self.lookup(path)[1]
        if length > len(node.data):
            if self.capacity and self.used() + length - len(node.data) > self.capacity:
                raise fuse.FuseOSError(errno.ENOSPC)
            node.data.extend(b"\0" * (length - len(node.data)))
        else:
            del node.data[length:]
        node.mtime = time.time()
        return 0

    def unlink(self, path: str) -> int:
        parent, name = self.parent(path)
        if name not in parent.entries:
            raise fuse.FuseOSError(errno.ENOENT)
        del parent.entries[name]
        return 0

    def rename(self, old: str, new: str) -> int:
        src, src_name = self.parent(old)
        dst, dst_name = self.parent(new)
        if src_name not in src.entries:
            raise fuse.FuseOSError(errno.ENOENT)
        dst.entries[dst_name] = src.entries.pop(src_name)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        node = self.inodes[fh]
        node.durable = bytes(node.data)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        node = self.inodes[fh] if fh in self.inodes else self.lookup(path)[1]
        node.durable_entries = dict(node.entries)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() makes nothing durable

    def release(self, path: str, fh: int) -> int:
        return 0

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def chmod(self, path: str, mode: int) -> int:
        _, node = self.lookup(path)
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        _, node = self.lookup(path)
        node.mtime = time.time()
        return 0

    def access(self, path: str, amode: int) -> int:
        self.lookup(path)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        total = self.capacity or 1 << 40
        free = max(0, total - self.used())
        return {
            "f_bsize": BLOCK,
            "f_frsize": BLOCK,
            "f_blocks": total // BLOCK,
            "f_bfree": free // BLOCK,
            "f_bavail": free // BLOCK,
            "f_files": 1 << 20,
            "f_ffree": 1 << 20,
            "f_favail": 1 << 20,
            "f_namemax": 255,
        }

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        if path == "/" and name == "user.capacity":
            self.capacity = int(value)
            return 0
        raise fuse.FuseOSError(errno.ENOTSUP)

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        raise fuse.FuseOSError(errno.ENODATA)

    def listxattr(self, path: str) -> list[str]:
        return []


def main() -> int:
    mountpoint, state_file = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.WARNING)
    faulthandler.register(signal.SIGUSR1)  # the harness asks for a stack when we are slow
    fs = PowerLossFs(state_file)
    try:
        run_fuse(fs, mountpoint)
    except RuntimeError as exc:
        # libfuse reports a loop ended by SIGTERM as an error; the state is still whole.
        print(f"fuse loop ended: {exc}", file=sys.stderr, flush=True)
    print("unmounted; saving the durable state", file=sys.stderr, flush=True)
    fs.save_durable()
    return 0


def run_fuse(fs: PowerLossFs, mountpoint: str) -> None:
    fuse.FUSE(
        fs,
        mountpoint,
        foreground=True,
        nothreads=True,
        fsname="powerlossfs",
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )


if __name__ == "__main__":
    sys.exit(main())
