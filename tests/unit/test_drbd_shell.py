"""The DRBD shell code is POSIX sh and shellcheck-clean (shellcheck is installed by
scripts/bootstrap; a missing shellcheck fails this test rather than skipping it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [
    REPO / "resources" / "drbd.sh",
    REPO / "tests" / "drbd_guest" / "build-image.sh",
    REPO / "tests" / "drbd_guest" / "guest-init.sh",
    REPO / "tests" / "guest_image" / "lib.sh",
    REPO / "tests" / "raid1_guest" / "build-image.sh",
    REPO / "tests" / "raid1_guest" / "guest-init.sh",
    REPO / "tests" / "raid1_guest" / "leg-watch.sh",
]


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: run scripts/bootstrap"
    result = subprocess.run(
        [shellcheck, "--shell=sh", *map(str, SCRIPTS)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrapper_runs_under_busybox_sh_too() -> None:
    # The test guests run the wrapper with BusyBox's sh; dash runs it on Debian hosts.
    for sh in ("dash", "busybox"):
        argv = [sh, "sh"] if sh == "busybox" else [sh]
        result = subprocess.run(
            [*argv, str(SCRIPTS[0]), "version"],
            check=False,
            capture_output=True,
            text=True,
            env={"DRBD_VERSION": "8.4", "PATH": "/usr/bin:/bin"},
        )
        assert (result.returncode, result.stdout) == (0, "8.4\n"), result.stderr
