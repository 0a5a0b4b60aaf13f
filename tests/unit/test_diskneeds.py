"""Disk sources from domain XML (haagent.core.diskneeds) and `check-config --here`'s disk check
(haagent.doctor) against real files and a real block device of this host."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from haagent.config import load_config
from haagent.core.diskneeds import MAX_PATH, DiskNeed, DiskNeedsError, disk_needs
from haagent.doctor import DoctorError, check_disks_here

CONFIG = """
[cluster]
name = "prod"
secret = "0123456789abcdef"

[local]
node = "n1"
data_dir = "state"
libvirt_uri = "test:///default"
api_listen = "127.0.0.1:8400"
api_token = "token-token-token"

[nodes.n1]
address = "127.0.0.1:7400"
memory_mib = 4096
fence = "watchdog"
watchdog_timeout_s = 5

[nodes.n2]
address = "127.0.0.1:7401"
memory_mib = 4096
fence = "watchdog"
watchdog_timeout_s = 5

[nodes.w]
address = "127.0.0.1:7402"
role = "witness"
"""


def domain(*disks: str) -> str:
    return f"<domain type='kvm'><name>g</name><devices>{''.join(disks)}</devices></domain>"


def file_disk(path: str, dev: str = "vda") -> str:
    return f"<disk type='file' device='disk'><source file='{path}'/><target dev='{dev}'/></disk>"


def test_every_kind_of_source_is_read_in_order() -> None:
    xml = domain(
        file_disk("/var/lib/g.qcow2"),
        "<disk type='block'><source dev='/dev/drbd/by-res/r0'/><target dev='vdb'/></disk>",
        "<disk type='network'><source protocol='nbd' name='g-a'><host name='hv1'/></source>"
        "<target dev='vdc'/></disk>",
        "<disk type='volume'><source pool='p' volume='v'/><target dev='vdd'/></disk>",
        "<disk type='file' device='cdrom'><target dev='hdc'/></disk>",  # empty drive
    )
    assert disk_needs(xml) == (
        DiskNeed("vda", "file", "/var/lib/g.qcow2"),
        DiskNeed("vdb", "block", "/dev/drbd/by-res/r0"),
        DiskNeed("vdc", "network", "nbd:g-a"),
        DiskNeed("vdd", "volume", "p/v"),
    )


@pytest.mark.parametrize(
    ("xml", "why"),
    [
        ("<domain", "not well-formed"),
        ("<network/>", "expected a <domain>"),
        (domain(file_disk("relative.qcow2")), "absolute path"),
        (domain(file_disk("/" + "a" * MAX_PATH)), "absolute path"),
        (domain("<disk type='block'><source/><target dev='vda'/></disk>"), "absolute path"),
    ],
)
def test_bad_sources_are_clear_errors(xml: str, why: str) -> None:
    with pytest.raises(DiskNeedsError, match=why):
        disk_needs(xml)


def _config(tmp_path: Path, xml: str, allowed: str = "") -> Path:
    (tmp_path / "g.xml").write_text(xml)
    guest = f'\n[guests.g]\nmemory_mib = 512\nxml = "g.xml"\n{allowed}'
    path = tmp_path / "n1.toml"
    path.write_text(CONFIG + guest)
    return path


def _block_device() -> str:
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        if stat.S_ISBLK(os.stat(path).st_mode):
            return path
    raise AssertionError("this host has no block device node in /dev")


def test_present_missing_and_wrong_kinds_are_reported(tmp_path: Path) -> None:
    image = tmp_path / "g.qcow2"
    image.write_bytes(b"")
    xml = domain(
        file_disk(str(image), "vda"),
        file_disk(str(tmp_path / "gone.qcow2"), "vdb"),
        file_disk(str(tmp_path), "vdc"),  # a directory
        f"<disk type='block'><source dev='{image}'/><target dev='vdd'/></disk>",
        f"<disk type='block'><source dev='{_block_device()}'/><target dev='vde'/></disk>",
        "<disk type='network'><source protocol='iscsi' name='iqn.x/1'/><target dev='vdf'/></disk>",
    )
    lines: list[str] = []
    assert check_disks_here(load_config(_config(tmp_path, xml)), lines.append) == 1
    text = "\n".join(lines)
    assert "disk vda" not in text
    assert (
        f"guest g disk vdb may move to n1 (this host), where {tmp_path}/gone.qcow2 does not exist"
        in text
    )
    assert "disk vdc may move to n1 (this host), where" in text and "is not a regular file" in text
    assert "disk vdd may move to n1 (this host), where" in text and "is not a block device" in text
    assert "disk vde" not in text
    assert "guest g disk vdf: network iscsi:iqn.x/1 (not checked: not a host path)" in text


def test_all_present_says_so_and_guests_not_allowed_here_are_skipped(tmp_path: Path) -> None:
    image = tmp_path / "g.qcow2"
    image.write_bytes(b"")
    lines: list[str] = []
    cfg = load_config(_config(tmp_path, domain(file_disk(str(image)))))
    assert check_disks_here(cfg, lines.append) == 0
    assert lines == ["  n1: all 1 file and block disks of its guests are present"]
    lines.clear()
    missing = domain(file_disk(str(tmp_path / "gone.qcow2")))
    cfg = load_config(_config(tmp_path, missing, 'allowed_nodes = ["n2"]\n'))
    assert check_disks_here(cfg, lines.append) == 0
    assert lines == []


def test_an_xml_that_became_unreadable_is_a_clear_error(tmp_path: Path) -> None:
    image = tmp_path / "g.qcow2"
    image.write_bytes(b"")
    cfg = load_config(_config(tmp_path, domain(file_disk(str(image)))))
    (tmp_path / "g.xml").write_text("<domain")
    with pytest.raises(DoctorError, match="guest g: cannot read its disks"):
        check_disks_here(cfg, print)
