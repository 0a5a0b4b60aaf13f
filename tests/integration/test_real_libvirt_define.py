"""A stale raid1 leg kept by an old persistent definition never reaches a real QEMU.

A private real libvirtd (tests/helpers/libvirt_host.py) and two `nbd-server` leg exports.
An earlier start left the domain defined with both legs; legb is stale now, so the agent
starts it with lega alone: the running domain has no legb disk, and legb's server never
sees a connection from the guest's QEMU (it would, had the old definition been started).
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from haagent.core.decisions import StartLeg
from haagent.resources.libvirt_guests import LibvirtHypervisor
from haagent.resources.raid1_disks import with_leg_disks
from tests.helpers.libvirt_host import LibvirtHost, grant_kvm_to_group, make_empty_disk
from tests.helpers.raid1_guest import NbdServer, wait_for

pytestmark = pytest.mark.integration

GUEST = "web1"


@dataclass
class Lab:
    host: LibvirtHost
    lega: NbdServer
    legb: NbdServer
    system_disk: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    grant_kvm_to_group()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    lega = NbdServer(tmp_path, "lega", 4)
    legb = NbdServer(tmp_path, "legb", 4)
    host = LibvirtHost(tmp_path / "h1")
    try:
        lega.start()
        legb.start()
        host.up()
        yield Lab(host, lega, legb, make_empty_disk(tmp_path / "system.qcow2", 16))
    finally:
        lega.kill()
        legb.kill()
        host.down()
        assert host.processes() == []


def base_xml(system_disk: Path) -> str:
    """The guest's configured XML: everything but the legs (SeaBIOS idles on an empty disk)."""
    return f"""<domain type='qemu'>
  <name>{GUEST}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{system_disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def leg_serials(conn: libvirt.virConnect, flags: int = 0) -> list[str]:
    xml = conn.lookupByName(GUEST).XMLDesc(flags)
    return sorted(s.text or "" for s in ET.fromstring(xml).iterfind("./devices/disk/serial"))


async def scenario(lab: Lab) -> None:
    a = StartLeg("lega", lab.lega.uri)
    b = StartLeg("legb", lab.legb.uri)
    hv = LibvirtHypervisor(lab.host.uri, call_timeout_s=60.0)
    await hv.open()
    conn = libvirt.open(lab.host.uri)
    try:
        # An earlier start (both legs fresh then) leaves the persistent definition behind.
        await hv.start(GUEST, with_leg_disks(base_xml(lab.system_disk), [a, b]), "C", "n1", 1)
        assert leg_serials(conn) == ["lega", "legb"]
        await hv.destroy(GUEST)
        assert leg_serials(conn, libvirt.VIR_DOMAIN_XML_INACTIVE) == ["lega", "legb"]
        wait_for("QEMU to let go of legb", lambda: lab.legb.connections() == [] or None, 10)
        # legb is stale now: the core allows lega only.
        await hv.start(GUEST, with_leg_disks(base_xml(lab.system_disk), [a]), "C", "n1", 2)
        assert leg_serials(conn) == ["lega"], "the stale leg of the old definition was started"
        assert leg_serials(conn, libvirt.VIR_DOMAIN_XML_INACTIVE) == ["lega"]
        assert lab.lega.connections() != []  # QEMU holds the leg it was given
        assert lab.legb.connections() == [], "QEMU opened the stale leg"
        await hv.destroy(GUEST)
    finally:
        conn.close()
        await hv.close()


def test_a_stale_leg_of_an_old_definition_never_reaches_qemu(lab: Lab) -> None:
    asyncio.run(scenario(lab))
