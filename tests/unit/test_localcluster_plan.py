"""LocalCluster plans render configs the real loader accepts: a node's own libvirtd and
migration URI, a guest's own domain XML, and the defaults unchanged without them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from haagent.config import load_config
from haagent.localcluster.cluster import GuestPlan, LocalCluster, local_plan

XML = "<domain type='qemu'><name>g</name><memory unit='MiB'>64</memory></domain>\n"


def test_node_uris_and_guest_xml_reach_the_config(tmp_path: Path) -> None:
    plan = local_plan(3, fence="dummy", guests=(GuestPlan("g", 64, xml=XML),), witness=True)
    n1, n2, n3 = plan.nodes
    nodes = (
        replace(n1, libvirt_uri="qemu:///system?socket=/tmp/h1/sock",
                migration_uri="qemu+tcp://10.214.0.1/system"),
        replace(n2, libvirt_uri="qemu:///system?socket=/tmp/h2/sock",
                migration_uri="qemu+tcp://10.214.0.2/system"),
        n3,
    )  # fmt: skip
    cluster = LocalCluster(tmp_path, replace(plan, nodes=nodes))
    cluster.write()
    assert (tmp_path / "guests" / "g.xml").read_text() == XML
    config = load_config(cluster.config_path("n1"))
    assert config.libvirt_uri == "qemu:///system?socket=/tmp/h1/sock"
    assert config.nodes["n2"].migration_uri == "qemu+tcp://10.214.0.2/system"
    assert config.nodes["n1"].migration_uri == "qemu+tcp://10.214.0.1/system"
    assert (
        load_config(cluster.config_path("n2")).libvirt_uri == "qemu:///system?socket=/tmp/h2/sock"
    )


def test_defaults_unchanged(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, local_plan(3, fence="dummy"))
    cluster.write()
    config = load_config(cluster.config_path("n1"))
    assert config.libvirt_uri == "test:///default"
    assert all(n.migration_uri == "" for n in config.nodes.values())
    assert "<domain type='test'>" in (tmp_path / "guests" / "g1.xml").read_text()


RAID1_XML = "<domain type='qemu'><name>r1</name><memory unit='MiB'>64</memory><devices/></domain>"


def test_raid1_legs_and_fence_agents_reach_the_config(tmp_path: Path) -> None:
    legs = (
        ("lega", "n1", "/dev/loop7", "nbd://127.0.0.1:10809/lega"),
        ("legb", "n2", "/dev/loop8", "nbd://127.0.0.1:10810/legb"),
    )
    plan = local_plan(
        3, fence="dummy", guests=(GuestPlan("r1", 64, xml=RAID1_XML, legs=legs),), witness=True
    )
    params = (("allow_file", "/tmp/allow b"), ("address", "127.0.0.1"))
    nodes = tuple(
        replace(n, fence="agent", fence_agent="/opt/fence_nbd_leg.py", fence_params=params)
        if n.role == "hypervisor"
        else n
        for n in plan.nodes
    )
    cluster = LocalCluster(tmp_path, replace(plan, nodes=nodes))
    cluster.write()
    config = load_config(cluster.config_path("n1"))
    [[device]] = config.fence_levels("n2")
    assert device.agent == "/opt/fence_nbd_leg.py"
    assert dict(device.params) == {"allow_file": "/tmp/allow b", "address": "127.0.0.1"}
    spec = next(s for s in config.agent_settings().guests if s.name == "r1")
    assert spec.storage.value == "raid1"
    assert [(leg.id, leg.holder, leg.local, leg.remote) for leg in spec.legs] == list(legs)
