"""The guest-RAID1 leg adapter: leg sources, leg disks, and its contracts on libvirt's test
driver (the real attach, detach and observation run in tests/integration/test_real_raid1.py)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest

from haagent.model import GuestSpec, Leg, StorageKind
from haagent.ports import HypervisorError
from haagent.resources.libvirt_guests import LibvirtHypervisor
from haagent.resources.mirrors import (
    LegSource,
    LibvirtMirrors,
    MirrorError,
    leg_disk_xml,
    parse_leg_source,
)

LEGS = (
    Leg("a", "hv1", "/dev/vg0/web1", "nbd://hv1:10809/web1"),
    Leg("b", "hv2", "/dev/vg0/web1", "nbd://hv2:10809/web1"),
)


def test_leg_sources() -> None:
    assert parse_leg_source("/dev/vg0/web1") == LegSource("block", "", 0, "/dev/vg0/web1")
    assert parse_leg_source("nbd://hv2:10810/web1") == LegSource("nbd", "hv2", 10810, "web1")
    assert parse_leg_source("nbd://10.1.0.2/web1").port == 10809
    iscsi = parse_leg_source("iscsi://hv2/iqn.2006-01.org.mhcodi:hv2.web1/1")
    assert iscsi == LegSource("iscsi", "hv2", 3260, "iqn.2006-01.org.mhcodi:hv2.web1/1")


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("file:///var/lib/web1.img", "scheme"),
        ("nbd:///web1", "no host"),
        ("nbd://hv2:10809/", "one export"),
        ("nbd://hv2/a/b", "one export"),
        ("iscsi://hv2/iqn.x", "target and LUN"),
        ("iscsi://hv2/iqn.x/lun1", "target and LUN"),
        ("nbd://user:pw@hv2/web1", "user info"),
        ("nbd://hv2:99999/web1", "out of range"),
        ("/dev/vg0/../sda", "plain absolute device path"),
        ("/dev/vg0/web1\n", "plain absolute device path"),
    ],
)
def test_bad_leg_sources_are_refused_with_the_reason(uri: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_leg_source(uri)


def test_leg_disk_carries_policy_serial_and_source() -> None:
    disk = ET.fromstring(leg_disk_xml("web1-hv2", "vdb", parse_leg_source("nbd://hv2/web1")))
    driver, source, target = disk.find("driver"), disk.find("source"), disk.find("target")
    assert driver is not None and driver.get("error_policy") == "stop"
    assert source is not None and (source.get("protocol"), source.get("name")) == ("nbd", "web1")
    host = source.find("host")
    assert host is not None and (host.get("name"), host.get("port")) == ("hv2", "10809")
    assert target is not None and target.get("dev") == "vdb"
    assert disk.findtext("serial") == "web1-hv2"
    report = leg_disk_xml("a", "vdc", parse_leg_source("nbd://h/e"), "report")
    assert 'error_policy="report"' in report
    with pytest.raises(ValueError, match="disk serial"):
        leg_disk_xml("a-leg-id-longer-than-20", "vdb", parse_leg_source("nbd://h/e"))
    with pytest.raises(ValueError, match="target dev"):
        leg_disk_xml("a", "hda", parse_leg_source("nbd://h/e"))
    local = ET.fromstring(leg_disk_xml("web1-hv1", "vdc", parse_leg_source("/dev/vg0/web1")))
    assert local.get("type") == "block"
    local_source = local.find("source")
    assert local_source is not None and local_source.get("dev") == "/dev/vg0/web1"


async def on_test_driver() -> None:
    hypervisor = LibvirtHypervisor("test:///default")
    await hypervisor.open()
    try:
        # "test" is the test driver's running domain; it has no guest agent.
        legs = {"test": ("lega",), "absent": ("lega",)}
        mirrors = LibvirtMirrors(
            hypervisor, lambda g: legs.get(g, ()), domain_of=lambda g: g, agent_timeout_s=1
        )
        assert await mirrors.observe("unconfigured") is None
        assert await mirrors.observe("absent") is None  # not defined here
        assert await mirrors.observe("test") is None  # no agent answers: no evidence
        with pytest.raises(MirrorError, match="no leg 'legb'"):
            await mirrors.attach_leg("test", "legb", "nbd://h/e")
        with pytest.raises(MirrorError, match="scheme"):
            await mirrors.attach_leg("test", "lega", "http://h/e")
        with pytest.raises(MirrorError, match="no such guest"):
            await mirrors.attach_leg("absent", "lega", "nbd://h/e")
        await mirrors.detach_leg("test", "lega")  # not attached: nothing to do
        # Its errors are hypervisor errors, as the port promises.
        with pytest.raises(HypervisorError):
            await mirrors.detach_leg("test", "legz")
    finally:
        await hypervisor.close()


def test_contracts_on_the_test_driver() -> None:
    asyncio.run(on_test_driver())


async def domain_named_otherwise() -> None:
    hypervisor = LibvirtHypervisor("test:///default")
    await hypervisor.open()
    try:
        # Guest "web1" runs as the test driver's domain "test"; "db1" has no legs.
        web1 = GuestSpec("web1", "test", 64, storage=StorageKind.RAID1, legs=LEGS)
        db1 = GuestSpec("db1", "db1-dom", 64)
        mirrors = LibvirtMirrors.for_guests(hypervisor, [web1, db1], agent_timeout_s=1)
        # Found under its domain's name: the detach of a leg it does not hold is done, and
        # the attach reaches libvirt (whose test driver cannot hot-plug), not "no such guest".
        await mirrors.detach_leg("web1", "a")
        with pytest.raises(MirrorError, match="attach leg a") as caught:
            await mirrors.attach_leg("web1", "a", "nbd://hv1/web1")
        assert "no such guest" not in str(caught.value)
        assert await mirrors.observe("db1") is None  # not a raid1 guest: nothing to observe
        with pytest.raises(MirrorError, match="no leg 'a'"):
            await mirrors.detach_leg("db1", "a")
    finally:
        await hypervisor.close()


def test_a_guest_is_found_under_its_domain_name() -> None:
    asyncio.run(domain_named_otherwise())
