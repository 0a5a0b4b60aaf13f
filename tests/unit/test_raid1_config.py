"""Guest RAID1 in the config (`storage = "raid1"`, its legs, `raid1_run_on`), the leg URI
parser and the leg disk XML: the example loads and agrees across its nodes, and every mistake
names its key and the problem."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from haagent.config import ConfigError, load_config
from haagent.core.decisions import StartLeg
from haagent.core.digests import config_digest
from haagent.leguri import LegUri, LegUriError, parse_leg_uri
from haagent.model import Leg, Raid1RunOn, StorageKind
from haagent.resources.raid1_disks import LegDiskError, with_leg_disks
from tests.unit.test_config import VALID, write

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "raid1-2hv"
DOMAIN = (
    "<domain type='kvm'><name>web</name><devices><disk type='file' device='disk'>"
    "<target dev='vda' bus='virtio'/></disk></devices></domain>"
)
LEG_A = '{ id = "a", holder = "n1", local = "/dev/vg/web-a", remote = "nbd://n1:10809/web-a" }'
LEG_B = '{ id = "b", holder = "n2", local = "/dev/vg/web-b", remote = "nbd://n2:10809/web-b" }'


def raid1(tmp_path: Path, extra: str = "", legs: str = f"[{LEG_A}, {LEG_B}]") -> str:
    (tmp_path / "web.xml").write_text(DOMAIN)
    return VALID.replace(
        "priority = 5", f'priority = 5\nstorage = "raid1"\nxml = "web.xml"\nlegs = {legs}\n{extra}'
    )


def test_the_example_loads_and_its_nodes_agree(tmp_path: Path) -> None:
    configs = [load_config(EXAMPLE / f"{n}.toml") for n in ("hv1", "hv2", "witness")]
    digests = {config_digest(c.agent_settings()) for c in configs}
    assert len(digests) == 1  # one cluster: every node joins with the same settings
    mail = configs[0].guests["mail"].spec
    assert mail.storage is StorageKind.RAID1 and mail.raid1_run_on is Raid1RunOn.HOLDERS
    assert mail.leg_holders == ("hv1", "hv2")
    assert mail.allows("hv1") and mail.allows("hv2") and not mail.allows("witness")
    for node in ("hv1", "hv2", "witness"):
        done = subprocess.run(
            [sys.executable, "-m", "haagent", "check-config", str(EXAMPLE / f"{node}.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"node {node}, 3 nodes, 2 guests" in done.stdout


def test_a_raid1_guest_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, raid1(tmp_path, 'raid1_run_on = "any"')))
    spec = cfg.guests["web"].spec
    assert spec.legs == (
        Leg("a", "n1", "/dev/vg/web-a", "nbd://n1:10809/web-a"),
        Leg("b", "n2", "/dev/vg/web-b", "nbd://n2:10809/web-b"),
    )
    assert spec.raid1_run_on is Raid1RunOn.ANY


def leg(**changes: str) -> str:
    fields = {"id": "b", "holder": "n2", "local": "/dev/vg/web-b", "remote": "nbd://n2/web-b"}
    fields.update(changes)
    inner = ", ".join(f'{k} = "{v}"' for k, v in fields.items() if v != "-")
    return f"[{LEG_A}, {{ {inner} }}]"


@pytest.mark.parametrize(
    ("extra", "legs", "key", "message"),
    [
        ("", "[]", "guests.web.legs", "exactly two leg tables"),
        ("", f"[{LEG_A}]", "guests.web.legs", "exactly two leg tables"),
        ("", f"[{LEG_A}, {LEG_B}, {LEG_B}]", "guests.web.legs", "exactly two leg tables"),
        ("", '"a,b"', "guests.web.legs", "exactly two leg tables"),
        ("", f"[{LEG_A}, 7]", "guests.web.legs[1]", "must be a table"),
        ("", leg(holder="n1"), "guests.web.legs", "both legs are held by n1"),
        ("", leg(holder="w"), "guests.web.legs[1].holder", "'w' is not a hypervisor"),
        ("", leg(holder="n9"), "guests.web.legs[1].holder", "'n9' is not a hypervisor"),
        ("", leg(holder="-"), "guests.web.legs[1].holder", "missing"),
        ("", leg(id="a"), "guests.web.legs", "same id 'a'"),
        ("", leg(id="-x"), "guests.web.legs[1].id", "must match"),
        ("", leg(id="b" * 21), "guests.web.legs[1].id", "must match"),
        ("", leg(local="vg/web-b"), "guests.web.legs[1].local", "absolute path"),
        ("", leg(local="/dev/a\\u0000b"), "guests.web.legs[1].local", "control characters"),
        ("", leg(local="/" + "d" * 5000), "guests.web.legs[1].local", "longer than"),
        ("", leg(remote="http://n2/web-b"), "guests.web.legs[1].remote", "must be nbd://"),
        ("", leg(remote="nbd://n2/web-b?x=1"), "guests.web.legs[1].remote", "no user info"),
        ("", leg(remote="nbd://u@n2/web-b"), "guests.web.legs[1].remote", "no user info"),
        ("", leg(remote="nbd://n2:99999/web-b"), "guests.web.legs[1].remote", "port 99999"),
        ("", leg(remote="nbd://n2/-rf"), "guests.web.legs[1].remote", "NBD export"),
        ("", leg(remote="nbd://n2/a\\u0000"), "guests.web.legs[1].remote", "printable"),
        ("", leg(remote="nbd://n2/" + "e" * 1100), "guests.web.legs[1].remote", "longer than"),
        ("", leg(remote="nbd://n1:10809/web-a"), "guests.web.legs", "same remote"),
        ("", leg(remote="iscsi://n2/iqn.x/1"), "guests.web.legs[1].remote", "iqn. or eui."),
        (
            "",
            leg(remote="iscsi://n2/iqn.2006-01.org.example:b/99999"),
            "guests.web.legs[1].remote",
            "LUN",
        ),
        ("", leg(remote="nbd://[zz::1]/web-b"), "guests.web.legs[1].remote", "IPv6"),
        ("", leg(remote="nbd://999.1.1.1/web-b"), "guests.web.legs[1].remote", "IPv4"),
        ("", leg(size="1G"), "guests.web.legs[1].size", "unknown key"),
        ('raid1_run_on = "anywhere"', f"[{LEG_A}, {LEG_B}]", "guests.web.raid1_run_on", '"any"'),
        ('allowed_nodes = ["n1"]\npreferred_nodes = ["n1"]\n', f"[{LEG_A}, {LEG_B}]", "", ""),
    ],
)
def test_raid1_mistakes_name_the_key_and_the_problem(
    tmp_path: Path, extra: str, legs: str, key: str, message: str
) -> None:
    text = raid1(tmp_path, extra, legs)
    if not key:  # a valid variant (allowed_nodes a subset of the holders)
        load_config(write(tmp_path, text.replace('preferred_nodes = ["n1"]\n', "", 1)))
        return
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.key == key, str(err.value)
    assert message in err.value.message, str(err.value)


def test_other_raid1_mistakes(tmp_path: Path) -> None:
    def fails(text: str, key: str, message: str) -> None:
        with pytest.raises(ConfigError) as err:
            load_config(write(tmp_path, text))
        assert err.value.key == key and message in err.value.message, str(err.value)

    base = raid1(tmp_path)
    fails(base.replace(f"legs = [{LEG_A}, {LEG_B}]", ""), "guests.web.legs", "missing")
    fails(base.replace('xml = "web.xml"\n', ""), "guests.web.xml", "required with storage")
    fails(
        VALID.replace("priority = 5", f"priority = 5\nlegs = [{LEG_A}, {LEG_B}]"),
        "guests.web.legs",
        'only for storage = "raid1"',
    )
    fails(
        VALID.replace("priority = 5", 'priority = 5\nraid1_run_on = "any"'),
        "guests.web.raid1_run_on",
        'only for storage = "raid1"',
    )
    # A preferred node holding no leg cannot run it (holders only).
    three = base.replace(
        "[nodes.w]",
        '[nodes.n3]\naddress = "10.0.0.4:7400"\nmemory_mib = 4096\n'
        'fence = [["ipmi-n1"]]\n\n[nodes.w]',
    ).replace('preferred_nodes = ["n1"]', 'preferred_nodes = ["n3"]')
    fails(three, "guests.web.preferred_nodes", "'n3' holds no leg")
    load_config(
        write(tmp_path, three.replace("priority = 5", 'priority = 5\nraid1_run_on = "any"'))
    )
    # One leg's disk serves one guest: never two writers on one leg.
    second = (
        '\n[guests.db]\nmemory_mib = 1\nstorage = "raid1"\nxml = "web.xml"\n'
        f'domain = "db"\nlegs = [{LEG_A.replace("web-a", "db-a")}, {LEG_B}]\n'
    )
    fails(base + second, "guests.db.legs[1].local", "also a leg of guest web")


# --- leg URIs and disk XML -----------------------------------------------------------------


def test_leg_uris_parse_strictly() -> None:
    assert parse_leg_uri("nbd://hv1/g1-a") == LegUri("nbd", "hv1", 10809, "g1-a", None)
    assert parse_leg_uri("nbd://[fd00::1]:10810/g1-a").host == "fd00::1"
    iscsi = parse_leg_uri("iscsi://10.0.0.1:3261/iqn.2006-01.org.example:g1-a/1")
    assert iscsi == LegUri("iscsi", "10.0.0.1", 3261, "iqn.2006-01.org.example:g1-a", 1)
    assert iscsi.name == "iqn.2006-01.org.example:g1-a/1"
    for bad in (
        "nbd://hv1",
        "nbd:///x",
        "nbd://hv1:0/x",
        "nbd://hv1/x#f",
        "nbd://hv1/%41",
        " nbd://h/x",
    ):
        with pytest.raises(LegUriError):
            parse_leg_uri(bad)


def test_leg_disks_carry_the_leg_id_as_serial_and_stop_on_errors() -> None:
    legs = (StartLeg("a", "/dev/vg/web-a"), StartLeg("b", "iscsi://h2/iqn.2006-01.org.x:b/0"))
    root = ET.fromstring(with_leg_disks(DOMAIN, legs))
    disks = root.findall("devices/disk")[1:]
    assert [d.findtext("serial") for d in disks] == ["a", "b"]
    assert [d.find("target").get("dev") for d in disks] == ["vdb", "vdc"]  # type: ignore[union-attr]
    assert all(d.find("driver").get("error_policy") == "stop" for d in disks)  # type: ignore[union-attr]
    assert disks[0].get("type") == "block" and disks[0].find("source").get("dev") == "/dev/vg/web-a"  # type: ignore[union-attr]
    source = disks[1].find("source")
    assert source is not None and source.get("protocol") == "iscsi"
    assert source.get("name") == "iqn.2006-01.org.x:b/0"
    with pytest.raises(LegDiskError, match="already has a disk with serial"):
        with_leg_disks(with_leg_disks(DOMAIN, legs[:1]), legs[:1])
    with pytest.raises(LegDiskError, match="no <devices>"):
        with_leg_disks("<domain><name>x</name></domain>", legs)
