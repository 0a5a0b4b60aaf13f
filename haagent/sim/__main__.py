"""`python -m haagent.sim --swarm ...` or `python -m haagent.sim --scenario FILE ...`: the
simulator's command line until `haagent simulate` dispatches to the same functions."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from haagent.sim.scenario import scenario_main
from haagent.sim.swarm import swarm_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--scenario" in args:
        return scenario_main(args)
    if "--swarm" in args:
        return swarm_main(args)
    print("usage: python -m haagent.sim --swarm --seeds N [--start S] [--workers W] [--verbose]")
    print("       python -m haagent.sim --scenario FILE [--seed N] [--trace]")
    return 2


if __name__ == "__main__":
    sys.exit(main())
