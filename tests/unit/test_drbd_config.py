"""The DRBD config snippets in config/drbd/ parse with the drbdadm of their DRBD version
(drbd-utils parse configs without the kernel module). drbdadm picks the `on HOST` section by
host name, so each check runs in its own UTS namespace named hv1 (needs root, as CI has)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNIPPETS = REPO / "config" / "drbd"


def dump(drbdadm: str, snippet: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / f"{snippet}.conf"
    conf.write_text(f'global {{ usage-count no; }}\ninclude "{SNIPPETS / snippet}";\n')
    return subprocess.run(
        ["unshare", "--uts", "sh", "-c", f'hostname hv1 && exec {drbdadm} -c "$0" dump web1',
         str(conf)],
        check=False, capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def test_84_snippet_parses_with_drbdadm_84(tmp_path: Path) -> None:
    result = dump("/usr/lib/drbd/drbdadm-84", "web1.drbd84.res", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fence-peer" in result.stdout and "resource-and-stonith" in result.stdout


def test_9_snippet_parses_with_drbdadm_9(tmp_path: Path) -> None:
    result = dump("/usr/sbin/drbdadm", "web1.drbd9.res", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "auto-promote" in result.stdout and "resource-and-stonith" in result.stdout


def test_the_versions_are_not_interchangeable(tmp_path: Path) -> None:
    # Why there are two snippets: 8.4 rejects 9's syntax (and 9 puts `fencing` in net {}).
    assert dump("/usr/lib/drbd/drbdadm-84", "web1.drbd9.res", tmp_path).returncode != 0
