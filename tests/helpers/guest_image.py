"""Cached TCG test-guest images (Debian's kernel + a BusyBox initramfs), shared by the real-DRBD
guests (tests/drbd_guest) and the real guest-RAID1 guests (tests/raid1_guest).

Each image is built by its folder's `build-image.sh` (common steps in tests/guest_image/lib.sh)
into `.cache/<name>/` of the checkout (ignored by git). The script rebuilds only when it, the
guest's /init or the kernel package changed, so a warm cache costs one `sh` call; the kernel
package is downloaded once into `.cache/guest-debs/` for every image.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
BUILD_TIMEOUT_S = 600.0


def ensure_image(guest_dir: str, image_name: str) -> Path:
    """Build (or reuse) `tests/<guest_dir>/build-image.sh`'s image; return its folder, which
    holds `vmlinuz` and `initrd.gz`."""
    out = CACHE / image_name
    script = REPO / "tests" / guest_dir / "build-image.sh"
    subprocess.run(["sh", str(script), str(out)], check=True, timeout=BUILD_TIMEOUT_S)
    return out
