"""Run the production DrbdWatcher (default argv: `sh resources/drbd.sh watch RES`) inside a
test guest and record what it reports, one JSON line per wake, to OUT:

    python -m tests.drbd_guest.watch_probe RES OUT

Each line: the watcher's `current`, its observation (or null), suspended I/O, the last helper
call, how often events2 was restarted, and the events2 pid (so a test can kill it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from haagent.resources.drbd import DrbdWatcher


async def probe(resource: str, out: Path) -> None:
    watcher: DrbdWatcher

    def wake() -> None:
        obs = watcher.observation()
        state = watcher.state()
        helper = state.helpers[-1] if state and state.helpers else None
        doc = {
            "t": time.monotonic(),
            "current": watcher.current,
            "obs": asdict(obs) if obs else None,
            "suspended": state.suspended if state else None,
            "helper": [helper.helper, helper.exit_code] if helper else None,
            "restarts": watcher.restarts,
            "pid": watcher.pid,
        }
        with out.open("a") as f:
            f.write(json.dumps(doc) + "\n")

    watcher = DrbdWatcher(resource, wake, backoff_initial_s=0.5)
    watcher.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(probe(sys.argv[1], Path(sys.argv[2])))
