"""The network parser against domain XML captured from libvirt (test:/// driver's dumpxml,
see tests/fixtures/domains) and against malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest

from haagent.core.netneeds import (
    NetNeedsError,
    NetworkNeed,
    libvirt_network,
    needed_interfaces,
    network_needs,
    valid_ifname,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "domains"


def _xml(name: str) -> str:
    return (FIXTURES / f"{name}.xml").read_text()


def test_bridges_vlan_devices_and_macvtap_in_document_order_without_duplicates() -> None:
    assert network_needs(_xml("bridge-vlan-direct")) == (
        NetworkNeed("br-backend", "bridge"),
        NetworkNeed("br0.100", "bridge"),
        NetworkNeed("eth0.200", "direct", "bridge"),
        NetworkNeed("eth1", "direct", "vepa"),
    )
    assert needed_interfaces(_xml("bridge-vlan-direct")) == (
        "br-backend",
        "br0.100",
        "eth0.200",
        "eth1",
    )


def test_ovs_vlan_tag_checks_the_bridge() -> None:
    assert needed_interfaces(_xml("ovs-vlan")) == ("ovsbr0",)


def test_a_domain_without_nics_needs_nothing() -> None:
    assert network_needs(_xml("none")) == ()


def test_a_libvirt_network_is_needed_by_name_for_each_host_to_resolve() -> None:
    (need,) = network_needs(_xml("network"))
    assert need == NetworkNeed("network:default", "network")
    assert libvirt_network(need.interface) == "default"
    assert libvirt_network("br0") is None  # an interface name never holds ':'


@pytest.mark.parametrize("name", ["", "a/b", "a b", "x" * 65])
def test_a_libvirt_network_name_that_cannot_be_one_is_refused(name: str) -> None:
    xml = f"<domain><devices><interface type='network'><source network='{name}'/></interface>"
    with pytest.raises(NetNeedsError, match="must name a libvirt network"):
        network_needs(xml + "</devices></domain>")


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<domain", "not well-formed"),
        ("<network/>", "expected a <domain>"),
        (
            "<domain><devices><interface type='bridge'/></devices></domain>",
            "source bridge=.*got ''",
        ),
        (
            "<domain><devices><interface type='direct'><source dev='a/b'/></interface>"
            "</devices></domain>",
            "got 'a/b'",
        ),
        (
            "<domain><devices><interface type='bridge'><source bridge='x234567890123456'/>"
            "</interface></devices></domain>",
            "1-15 characters",
        ),
        (
            "<domain><devices><interface type='warp'/></devices></domain>",
            "unknown interface type",
        ),
    ],
)
def test_bad_xml_gets_a_clear_error(xml: str, message: str) -> None:
    with pytest.raises(NetNeedsError, match=message):
        network_needs(xml)


def test_interface_names() -> None:
    assert valid_ifname("eth0.100")
    assert not valid_ifname("")
    assert not valid_ifname("a b")
    assert not valid_ifname("..")
    assert not valid_ifname("x" * 16)
