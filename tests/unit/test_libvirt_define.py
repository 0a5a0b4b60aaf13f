"""A start uses the definition the agent intends, never a stale one kept by the host.

Pure comparison of disk layouts, and the adapter's start on libvirt's in-process test driver
(real libvirt): an old persistent definition that still lists a leg now stale must not bring
that leg into the started domain.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from haagent.core.decisions import StartLeg
from haagent.ports import HypervisorError
from haagent.resources.libvirt_define import DefinitionError, definition_to_apply, disk_layout
from haagent.resources.libvirt_guests import LibvirtHypervisor
from haagent.resources.raid1_disks import with_leg_disks
from tests.unit.test_libvirt_test_driver import NODE_XML  # a private test-driver node

UUID = "035ab7f2-3950-4ce5-976b-c09e72196fa0"
BASE = (
    "<domain type='test'><name>web1</name><memory unit='MiB'>64</memory>"
    "<os><type arch='x86_64'>hvm</type></os><devices/></domain>"
)
LEGA = StartLeg("lega", "nbd://hv1:10809/web1")
LEGB = StartLeg("legb", "nbd://hv2:10809/web1")


def serials(xml: str) -> list[str]:
    return sorted(s.text or "" for s in ET.fromstring(xml).iter("serial"))


def test_same_disks_need_no_redefinition_whatever_libvirt_added() -> None:
    intended = with_leg_disks(BASE, [LEGA, LEGB])
    root = ET.fromstring(intended)
    for disk in root.iter("disk"):
        # What libvirt fills in on its own, and attribute order, do not count.
        ET.SubElement(disk, "address", type="pci", domain="0x0000", bus="0x00", slot="0x05")
        ET.SubElement(disk, "alias", name="virtio-disk1")
    stored = ET.tostring(root, encoding="unicode")
    assert disk_layout(stored) == disk_layout(intended)
    assert definition_to_apply(stored, intended, UUID) is None


def test_a_stored_stale_leg_means_redefine_with_the_stored_uuid() -> None:
    stored = with_leg_disks(BASE, [LEGA, LEGB])
    intended = with_leg_disks(BASE, [LEGA])
    new = definition_to_apply(stored, intended, UUID)
    assert new is not None
    assert serials(new) == ["lega"]
    assert ET.fromstring(new).findtext("uuid") == UUID


@pytest.mark.parametrize(
    "change",
    [
        # Same leg from another holder, another error policy, another target: all differ.
        lambda x: x.replace("hv1", "hv3"),
        lambda x: x.replace('error_policy="stop"', 'error_policy="report"'),
        lambda x: x.replace("vdb", "vdc"),
    ],
)
def test_any_difference_inside_a_disk_counts(change: Callable[[str], str]) -> None:
    intended = with_leg_disks(BASE, [LEGA])
    stored = change(intended)
    assert stored != intended
    assert definition_to_apply(stored, intended, UUID) is not None


def test_another_uuid_in_the_guest_xml_is_refused_with_the_way_out() -> None:
    stored = with_leg_disks(BASE, [LEGA, LEGB])
    other = "11111111-2222-3333-4444-555555555555"
    intended = with_leg_disks(BASE.replace("</name>", f"</name><uuid>{other}</uuid>"), [LEGA])
    with pytest.raises(DefinitionError, match="virsh undefine"):
        definition_to_apply(stored, intended, UUID)
    # The same uuid, spelled in capitals, is the same domain.
    same = intended.replace(other, UUID.upper())
    assert definition_to_apply(stored, same, UUID) is not None


def test_bad_xml_is_a_clear_error() -> None:
    with pytest.raises(DefinitionError, match="intended domain XML"):
        definition_to_apply(BASE, "<domain", UUID)
    with pytest.raises(DefinitionError, match="expected <domain>"):
        definition_to_apply(BASE, "<node/>", UUID)


async def stale_leg_never_reaches_the_started_domain(uri: str) -> None:
    hv = LibvirtHypervisor(uri)
    await hv.open()
    try:
        # An earlier start left a persistent definition with both legs.
        await hv.start("web1", with_leg_disks(BASE, [LEGA, LEGB]), "C", "hv1", 1)
        await hv.destroy("web1")

        def live_and_stored(conn: libvirt.virConnect) -> tuple[str, str, str]:
            dom = conn.lookupByName("web1")
            return (
                dom.XMLDesc(0),
                dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
                dom.UUIDString(),
            )

        _, _, uuid = await hv.call("read", live_and_stored)
        # legb is stale now: the core allows lega only.
        await hv.start("web1", with_leg_disks(BASE, [LEGA]), "C", "hv1", 2)
        live, stored, uuid_after = await hv.call("read", live_and_stored)
        assert serials(live) == ["lega"], "a stale leg of the old definition was started"
        assert serials(stored) == ["lega"]
        assert uuid_after == uuid  # the same domain, redefined
        assert (await hv.domains())["web1"].generation == 2
        # A running domain is never redefined: a start under its own owner record is a no-op.
        await hv.start("web1", with_leg_disks(BASE, [LEGA, LEGB]), "C", "hv1", 2)
        live, _, _ = await hv.call("read", live_and_stored)
        assert serials(live) == ["lega"]
        await hv.destroy("web1")
        # A guest XML naming another uuid is refused with the reason, and nothing starts.
        other = BASE.replace("</name>", "</name><uuid>11111111-2222-3333-4444-555555555555</uuid>")
        with pytest.raises(HypervisorError, match="virsh undefine"):
            await hv.start("web1", with_leg_disks(other, [LEGB]), "C", "hv1", 3)
        assert not (await hv.domains())["web1"].running
    finally:
        await hv.close()


def test_a_stale_leg_of_an_old_definition_never_reaches_the_started_domain(
    tmp_path: Path,
) -> None:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    asyncio.run(stale_leg_never_reaches_the_started_domain(f"test://{node}"))
