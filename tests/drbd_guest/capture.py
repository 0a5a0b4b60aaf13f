"""Capture real DRBD 8.4 `events2` streams from the TCG test guests, as parser fixtures.

    .venv/bin/python -m tests.drbd_guest.capture tests/fixtures/drbd

Not run in CI: it recorded the files in tests/fixtures/drbd/ (see the README there). Runs the
production wrapper (resources/drbd.sh) in both guests through: initial connect (both
Inconsistent), forced first promotion and initial sync, a cut replication link with
resource-and-stonith fencing (a stub fence-peer handler that exits 7), outdating the cut-off
Secondary, reconnect and resync, and a split brain.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.drbd_guest import DrbdGuest, ensure_image, free_port

WRAPPER = "/host" + str(Path(__file__).resolve().parents[2] / "resources" / "drbd.sh")

CONF = """global { usage-count no; }
resource r0 {
  device /dev/drbd0; disk /dev/vda; meta-disk internal;
  disk { fencing resource-and-stonith; }
  handlers { fence-peer "/tmp/stub-fence.sh"; unfence-peer "/tmp/stub-fence.sh"; }
  net { protocol C; ping-int 1; ping-timeout 5; timeout 10; connect-int 2; }
  on guest1 { address 10.99.1.1:7789; }
  on guest2 { address 10.99.1.2:7789; }
}
"""
STUB = """#!/bin/sh
echo "$0 $* $(env | grep ^DRBD_ | sort | tr '\\n' ' ')" >> /tmp/stub-fence.log
sleep 1
exit 7
"""


def wait(guest: DrbdGuest, what: str, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        out = guest.run(f"sh {WRAPPER} status r0")[1]
        if all(w in out for w in what.split("&")):
            return out
        if time.monotonic() > deadline:
            raise SystemExit(f"{guest.name}: no {what!r} in {timeout_s}s: {out}")
        time.sleep(1)


def main(out_dir: Path) -> None:
    ensure_image()
    out_dir.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="drbd-capture-"))
    (run / "drbd.conf").write_text(CONF)
    (run / "stub-fence.sh").write_text(STUB)
    g1, g2 = DrbdGuest(1, run), DrbdGuest(2, run)
    notes: list[str] = []

    def note(text: str) -> None:
        print(text, flush=True)
        notes.append(text)

    def save(name: str, text: str) -> None:
        (out_dir / name).write_text(text)
        note(f"saved {name}")

    try:
        port = free_port()
        g1.start(port, True)
        g2.start(port, False)
        g1.wait_ready()
        g2.wait_ready()
        note(g1.check("head -n 1 /proc/drbd"))
        for g in (g1, g2):
            g.check(f"cp /host{run}/drbd.conf /etc/drbd.conf")
            g.check(
                f"cp /host{run}/stub-fence.sh /tmp/stub-fence.sh && chmod +x /tmp/stub-fence.sh"
            )
            g.check("drbdadm create-md --force r0")
            g.check(f"sh {WRAPPER} watch r0 > /tmp/watch.log 2>&1 &")
            note(f"{g.name} up: {g.run(f'sh {WRAPPER} up r0')}")
        save("84-status-connected-inconsistent.txt", wait(g1, "connection:Connected"))
        note(f"g1 promote while Inconsistent: {g1.run(f'sh {WRAPPER} promote r0')}")
        g1.check("drbdadm primary --force r0")
        wait(g2, "disk:UpToDate&peer-disk:UpToDate")
        save("84-status-primary-uptodate.txt", wait(g1, "disk:UpToDate&peer-disk:UpToDate"))
        save("84-status-secondary-uptodate.txt", g2.check(f"sh {WRAPPER} status r0"))
        note(f"g2 promote while peer Primary: {g2.run(f'sh {WRAPPER} promote r0')}")
        # Cut the replication link: the Primary freezes I/O and calls fence-peer.
        g2.check("ip link set eth0 down")
        t = time.monotonic()
        g1.check("dd if=/dev/zero of=/dev/drbd0 bs=4k count=1 oflag=direct", timeout_s=120)
        note(f"g1 write after cut took {time.monotonic() - t:.1f}s")
        save("84-status-primary-peer-fenced.txt", g1.check(f"sh {WRAPPER} status r0"))
        save("84-status-secondary-cut-off.txt", g2.check(f"sh {WRAPPER} status r0"))
        note(f"g2 outdate: {g2.run(f'sh {WRAPPER} outdate r0')}")
        save("84-status-secondary-outdated.txt", g2.check(f"sh {WRAPPER} status r0"))
        note(f"g2 promote while Outdated: {g2.run(f'sh {WRAPPER} promote r0')}")
        g2.check("ip link set eth0 up")
        wait(g1, "connection:Connected&peer-disk:UpToDate")
        save("84-status-resynced.txt", g2.check(f"sh {WRAPPER} status r0"))
        # Split brain: both sides write while apart, then reconnect.
        g2.check("ip link set eth0 down")
        g1.check("dd if=/dev/zero of=/dev/drbd0 bs=4k count=1 oflag=direct", timeout_s=120)
        note(f"g2 promote while cut off: {g2.run('drbdadm primary r0', timeout_s=120)}")
        g2.run("dd if=/dev/zero of=/dev/drbd0 bs=4k count=1 oflag=direct", timeout_s=120)
        g2.check("ip link set eth0 up")
        time.sleep(15)
        save("84-status-split-brain-primary1.txt", g1.check(f"sh {WRAPPER} status r0"))
        save("84-status-split-brain-primary2.txt", g2.check(f"sh {WRAPPER} status r0"))
        for g in (g1, g2):
            save(f"84-watch-{g.name}.txt", g.check("cat /tmp/watch.log"))
            note(f"{g.name} handler calls: {g.run('cat /tmp/stub-fence.log')[1]}")
    finally:
        g1.close()
        g2.close()
        (out_dir / "capture-notes.txt").write_text("\n".join(notes) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
