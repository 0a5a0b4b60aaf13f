"""Run inside a network namespace (`ip netns exec NS python -m tests.helpers.netlink_probe
IFNAME...`): prints one JSON line with the problems of the named interfaces at start and one
after every netlink link event, with the CLOCK_MONOTONIC time the event woke the loop (the
clock is system-wide, so the test measures wake-up latency against its own clock). The check
runs in a worker thread, as in the daemon (pyroute2's sync API must not run on a running
loop). Exits when its stdin closes."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from haagent.resources.netlink import LinkWatcher, check_links


async def main(needed: list[str]) -> None:
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    woke_at = [time.monotonic()]

    def on_change() -> None:
        if not changed.is_set():
            woke_at[0] = time.monotonic()
        changed.set()

    watcher = LinkWatcher(on_change)
    watcher.start(loop)
    stdin_closed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stdin_closed.set)
    changed.set()
    while not stdin_closed.is_set():
        waiter = asyncio.ensure_future(changed.wait())
        closer = asyncio.ensure_future(stdin_closed.wait())
        await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        closer.cancel()
        if not changed.is_set():
            continue
        changed.clear()
        at = woke_at[0]
        found = await asyncio.to_thread(check_links, needed)
        print(json.dumps({"woke_at": at, "problems": found}), flush=True)
    watcher.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
