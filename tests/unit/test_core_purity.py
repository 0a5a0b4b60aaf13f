"""The functional core stays pure: it imports no adapter, no I/O and no clock.

The simulator and the property tests rely on this: the same `apply` and `AgentCore` run in the
daemon and under a fake clock, so anything here that read the time or touched the network
would make the simulation lie.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = [
    "model",
    "codec",
    "commands",
    "statemachine",
    "statemachine_admin",
    "statemachine_migration",
    "statemachine_checks",
    "statemachine_fencing",
    "statemachine_reports",
    "placement",
    "agent",
    "ports",
    "status",
    "timing",
    "core",
    "core.keys",
    "core.settings",
    "core.decisions",
    "core.inflight",
    "core.authority",
    "core.lease",
    "core.failure_detection",
    "core.fencing",
    "core.scheduling",
    "core.instances",
    "core.guests",
    "core.storage",
    "core.drbd",
    "core.raid1",
    "core.digests",
    "core.divergence",
    "core.networks",
    "core.arming",
    "core.netneeds",
    "core.migration",
    "core.diskneeds",
]
PACKAGE = Path(__file__).resolve().parents[2] / "haagent"
FORBIDDEN = {
    "aiohttp",
    "libvirt",
    "libvirtaio",
    "pysyncobj",
    "pyroute2",
    "prometheus_client",
    "asyncio",
    "time",
    "os",
    "socket",
    "subprocess",
    "threading",
    "random",
    "datetime",
    "pathlib",
    "io",
    "logging",
}


def source_of(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(module: str) -> set[str]:
    tree = ast.parse(source_of(module).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_modules_import_only_the_core_and_the_standard_library_basics() -> None:
    for module in CORE:
        for name in imports_of(module):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"haagent.{module} imports {name}"
            if top == "haagent":
                inner = name.removeprefix("haagent.")
                assert inner in CORE, f"haagent.{module} imports the adapter/shell {name}"


def test_every_module_of_the_core_package_is_checked() -> None:
    """A new concern under haagent/core/ is pure too, or this list says why not."""
    on_disk = {f"core.{p.stem}" for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__"}
    assert on_disk <= set(CORE), sorted(on_disk - set(CORE))


def test_the_check_itself_would_notice_an_adapter_import() -> None:
    assert "haagent.vendor.pysyncobj" in imports_of("consensus")
    assert "haagent.agent" in imports_of("daemon/shell")
