"""The functional core stays pure: it imports no adapter, no I/O and no clock.

The simulator and the property tests rely on this: the same `apply` and `AgentCore` run in the
daemon and under a fake clock, so anything here that read the time or touched the network
would make the simulation lie.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = ["model", "codec", "commands", "statemachine", "placement", "agent", "ports", "status"]
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


def imports_of(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
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
                inner = name.split(".")[1]
                assert inner in CORE, f"haagent.{module} imports the adapter/shell {name}"


def test_the_check_itself_would_notice_an_adapter_import() -> None:
    assert "haagent.vendor.pysyncobj" in imports_of("consensus")
    assert "haagent.agent" in imports_of("daemon/shell")
