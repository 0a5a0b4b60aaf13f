"""The `haagent local` argument parser, apart from the commands it runs.

Why a module of its own: the agent (`haagent run`) builds the same argument parser, and the
commands behind `local` import the local-cluster harness and the simulator; importing those only
when a `local` command runs keeps them out of every agent's memory (issue 7: RSS).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "local-3node"
DEFAULT_DIR = Path(".haagent-local")
TENTH_FLOOR_WATCHDOG_S = 3.0


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    """The command `name` of haagent.localcluster.cli, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from haagent.localcluster import cli

        command: Callable[[argparse.Namespace], int] = getattr(cli, name)
        return command(args)

    return run


def add_local_parser(sub: Any) -> None:
    local = sub.add_parser("local", help="run a 3-node cluster on this machine (demo)")
    lsub = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    for name, help_text, func in (
        ("up", "start the cluster and return once guests run", _lazy("_cmd_up")),
        ("down", "stop everything `up` started", _lazy("_cmd_down")),
        ("status", "print the cluster status", _lazy("_cmd_status")),
        ("demo", "up, kill a guest's owner, show the failover timeline, down", _lazy("_cmd_demo")),
    ):
        p = lsub.add_parser(name, help=help_text)
        p.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help=f"run folder (default {DEFAULT_DIR})"
        )
        if name in ("up", "demo"):
            p.add_argument(
                "--example",
                type=Path,
                default=REPO_EXAMPLE,
                help="folder with the node configs (default: the repo's "
                "config/examples/local-3node)",
            )
        if name == "demo":
            p.add_argument("--guest", default="web1", help="guest whose owner to kill")
            p.add_argument(
                "--tenth-floor",
                action="store_true",
                help="the owner dies together with its BMC, so every power fence fails; its "
                f"fencing ends with a watchdog level ({TENTH_FLOOR_WATCHDOG_S:g} s stand-in "
                "watchdog) that recovers the guest",
            )
            p.add_argument(
                "--drbd",
                action="store_true",
                help="the DRBD failover of two hypervisors and a witness, SIMULATED (this "
                "host has no DRBD module): the agents' core against the simulator's DRBD",
            )
            p.add_argument("--keep", action="store_true", help="leave the cluster running")
        p.set_defaults(func=func)
