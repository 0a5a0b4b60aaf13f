"""A libvirt network (`<interface type='network'>`) resolved to this host's bridge by the real
libvirt test driver (in-process; `test:///default` has the active network `default` on
`virbr0`), and judged like a named bridge; libvirt unreachable makes the check fail (the
condition unknown), never every network lost."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from haagent.resources.libvirt_networks import LibvirtNetworkError, _resolve, resolve_networks
from haagent.resources.netlink import LinkInfo, problems

INACTIVE = "<network><name>off</name><bridge name='virbr9'/></network>"


def test_the_test_drivers_default_network_resolves_to_its_bridge() -> None:
    assert resolve_networks("test:///default", ["default", "nope"]) == {
        "default": ("virbr0", ""),
        "nope": (None, "not defined in libvirt"),
    }


def test_an_inactive_network_or_one_without_a_bridge_does_not_work(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"  # a test-driver host whose network has no bridge
    node.write_text(
        "<node><network><name>pool</name><forward mode='hostdev' managed='yes'>"
        "<pf dev='eth9'/></forward></network></node>"
    )
    bridge, why = resolve_networks(f"test://{node}", ["pool"])["pool"]
    assert bridge is None and why.startswith("has no bridge to check")
    # Each open of the test driver starts afresh: define and ask on one connection.
    conn = libvirt.open("test:///default")
    try:
        conn.networkDefineXML(INACTIVE)
        assert _resolve(conn, "off") == (None, "not active in libvirt")
    finally:
        conn.close()


def test_libvirt_unreachable_fails_the_check() -> None:
    with pytest.raises(LibvirtNetworkError, match="cannot connect"):
        resolve_networks("qemu:///system?socket=/nonexistent/haagent-test.sock", ["default"])


def test_the_resolved_bridge_is_judged_like_a_named_one() -> None:
    links = [
        LinkInfo("virbr0", 1, "bridge", up=True, carrier=False, master=None),
        LinkInfo("virbr1", 2, "bridge", up=False, carrier=False, master=None),
    ]
    resolved = {
        "default": ("virbr0", ""),
        "down": ("virbr1", ""),
        "gone": ("virbr2", ""),
        "off": (None, "not active in libvirt"),
    }
    needed = ["network:default", "network:down", "network:gone", "network:off", "network:x"]
    assert problems(links, needed, resolved) == {
        "network:down": "bridge virbr1 down",
        "network:gone": "bridge virbr2 absent",
        "network:off": "not active in libvirt",
        "network:x": "not resolved",
    }
