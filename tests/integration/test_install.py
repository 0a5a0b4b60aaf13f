"""scripts/install into a scratch root: the files land where the unit expects them, nothing
is written outside the root, the installed unit verifies with `systemd-analyze verify`, and
the installed example passes `haagent check-config` run by the installed venv."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# What a real install writes; a scratch-root install must leave each of them as it was.
SYSTEM_PATHS = [
    Path("/opt/haagent"),
    Path("/etc/haagent"),
    Path("/usr/local/bin/haagent"),
    Path("/etc/systemd/system/haagent.service"),
    Path("/usr/share/doc/haagent"),
]


def fingerprint(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_ino


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "install"), "--destdir", str(root)],
        check=False,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "TMPDIR": str(root.parent)},
    )


def test_install_into_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = {p: fingerprint(p) for p in SYSTEM_PATHS}
    done = install(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p: fingerprint(p) for p in SYSTEM_PATHS} == before

    # The entry point the unit runs, and the venv it starts.
    unit = root / "etc/systemd/system/haagent.service"
    exec_start = re.search(r"^ExecStart=(\S+) (.*)$", unit.read_text(), re.M)
    assert exec_start and exec_start.group(1) == "/usr/local/bin/haagent"
    entry = root / "usr/local/bin/haagent"
    assert entry.stat().st_mode & 0o111
    python = re.search(r"^exec (\S+) -I -m haagent", entry.read_text(), re.M)
    assert python and python.group(1) == "/opt/haagent/venv/bin/python"
    assert "LimitNOFILE=" in unit.read_text()

    # systemd-analyze verify on the installed unit, its ExecStart pointed into the root.
    checked = tmp_path / "haagent.service"
    checked.write_text(unit.read_text().replace("ExecStart=/", f"ExecStart={root}/", 1))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(checked)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr + proc.stdout

    # The config directory: private, the example, three distinct generated secrets.
    etc = root / "etc/haagent"
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    secrets = {}
    for name in ("secret", "admin.token", "read.token"):
        f = etc / name
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        secrets[name] = f.read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", secrets[name]), name
    assert len(set(secrets.values())) == 3

    # `haagent check-config` on the installed example, by the installed venv (as the entry
    # point would run it, with the root in front of its absolute path).
    config = etc / "haagent.toml"
    check = subprocess.run(
        [f"{root}{python.group(1)}", "-I", "-m", "haagent", "check-config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert "ok (cluster prod, node hv1" in check.stdout

    # Every module of the checkout is in the installed package (a wheel built from a
    # package list that forgot haagent.daemon installed fine and then could not `run`).
    site = next((root / "opt/haagent/venv/lib").glob("python3*/site-packages"))
    layout = [("haagent", "haagent"), ("fencing", "haagent/fencing")]
    layout.append(("resources", "haagent/resources"))
    for src, dest in layout:
        for f in (REPO / src).rglob("*"):
            if f.suffix in (".py", ".sh") and "__pycache__" not in f.parts:
                installed = site / dest / f.relative_to(REPO / src)
                assert installed.is_file(), f"{installed} is missing from the install"
    imports = subprocess.run(
        [f"{root}{python.group(1)}", "-I", "-c", "import haagent.daemon.shell"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imports.returncode == 0, imports.stderr

    # Re-running is an upgrade: the config and the secrets are kept.
    config.write_text(config.read_text() + "\n# edited by the admin\n")
    done = install(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert config.read_text().endswith("# edited by the admin\n")
    assert (etc / "secret").read_text().strip() == secrets["secret"]
