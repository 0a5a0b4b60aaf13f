"""The agent's malloc settings apply, and an admin's own setting wins (haagent.daemon.malloc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from haagent.daemon.malloc import tune_malloc; print(tune_malloc())"


def _run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", CODE], env=clean | env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_the_settings_apply_on_glibc() -> None:
    assert _run({}) == "True"


@pytest.mark.parametrize(
    "env",
    [{"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}],
)
def test_an_admins_own_malloc_setting_is_kept(env: dict[str, str]) -> None:
    assert _run(env) == "False"
