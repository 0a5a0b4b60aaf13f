"""Capture real `/proc/mdstat` texts (and md member state files) from the RAID1 test guest.

    .venv/bin/python -m tests.raid1_guest.capture tests/fixtures/mdstat

Not run in CI: it recorded the files in tests/fixtures/mdstat/ (see the README there). One TCG
guest under a private libvirtd with two NBD legs (error_policy='report', so md sees the I/O
errors) goes through: initial resync, clean, a member failed by mdadm, the member removed
(degraded), the member added back (recovering, with progress), clean again, and a leg whose
server was killed (md fails it on the next write). For each state it writes NAME.mdstat and
NAME.states (one "device state" line per member, from /sys/block/md0/md/dev-*/state).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import libvirt

from haagent.resources.guest_agent import read_file
from tests.helpers.libvirt_host import LibvirtHost, grant_kvm_to_group
from tests.helpers.raid1_guest import (
    NbdServer,
    Raid1Guest,
    ensure_image,
    raid1_domain_xml,
    wait_for,
)


def save(out: Path, name: str, guest: Raid1Guest) -> str:
    mdstat = read_file(guest.dom, "/proc/mdstat", 5)
    members = re.findall(r"\b(vd[a-z])\[", mdstat)
    states = []
    for dev in members:
        states.append(
            f"{dev} {read_file(guest.dom, f'/sys/block/md0/md/dev-{dev}/state', 5).strip()}"
        )
    (out / f"{name}.mdstat").write_text(mdstat)
    (out / f"{name}.states").write_text("\n".join(states) + "\n")
    print(f"--- {name}\n{mdstat}{chr(10).join(states)}")
    return mdstat


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    image = ensure_image()
    grant_kvm_to_group()
    with tempfile.TemporaryDirectory(prefix="raid1-capture-") as tmp:
        base = Path(tmp)
        legs = [NbdServer(base, "lega", 64), NbdServer(base, "legb", 64)]
        host = LibvirtHost(base / "h1")
        try:
            for leg in legs:
                leg.start()
            host.up()
            conn = libvirt.open(host.uri)
            console = base / "console.log"
            spec = [("lega", "vda", legs[0].uri), ("legb", "vdb", legs[1].uri)]
            conn.createXML(raid1_domain_xml("r1", image, console, spec, "report"), 0)
            g = Raid1Guest(conn, "r1", console)
            g.wait_ready()
            g.check("touch /run/leg-watch.off")  # members are failed and removed by hand here
            g.check("echo 4000 > /proc/sys/dev/raid/speed_limit_max")
            g.check(
                "mdadm --create /dev/md0 --level=1 --raid-devices=2 --bitmap=none --run "
                "/dev/vda /dev/vdb"
            )
            wait_for("resync", lambda: "resync =" in save(out, "resync", g) or None, 60)
            g.check("echo 200000 > /proc/sys/dev/raid/speed_limit_max")
            wait_for(
                "clean",
                lambda: (
                    ("[UU]" in (m := read_file(g.dom, "/proc/mdstat", 5)) and "resync" not in m)
                    or None
                ),
                120,
            )
            save(out, "clean", g)
            g.check("mdadm /dev/md0 --fail /dev/vdb")
            save(out, "faulty", g)
            g.check("mdadm /dev/md0 --remove /dev/vdb")
            save(out, "degraded", g)
            g.check("echo 2000 > /proc/sys/dev/raid/speed_limit_max")
            g.check("mdadm /dev/md0 --add /dev/vdb")
            wait_for("recovery", lambda: "recovery =" in save(out, "recovering", g) or None, 60)
            g.check("echo 200000 > /proc/sys/dev/raid/speed_limit_max")
            wait_for(
                "clean again",
                lambda: (
                    ("[UU]" in (m := read_file(g.dom, "/proc/mdstat", 5)) and "recovery" not in m)
                    or None
                ),
                120,
            )
            legs[1].kill()
            g.run("dd if=/dev/urandom of=/dev/md0 bs=4k count=16 oflag=direct conv=fsync", 60)
            wait_for("failed leg", lambda: "(F)" in save(out, "leg-lost", g) or None, 60)
        finally:
            for leg in legs:
                leg.kill()
            host.down()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
