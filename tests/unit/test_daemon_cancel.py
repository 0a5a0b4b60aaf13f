"""haagent.daemon.observer.cancel: the shutdown's way to end a looping task. It must end a
task that swallowed a cancel, as `asyncio.wait_for` does on Python 3.11 when its inner call
completes just as the cancel arrives (gh-86296): awaiting such a task once hung a shutdown
for ever, after the agent had left the cluster cleanly (a CI run of test_systemd.py)."""

from __future__ import annotations

import asyncio

import pytest

from haagent.daemon.observer import cancel


async def looping(swallow: int) -> None:
    """Loops like the observer; the first `swallow` cancels are lost, as in wait_for."""
    lost = 0
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if lost >= swallow:
                raise
            lost += 1


def test_a_task_that_swallowed_a_cancel_still_ends() -> None:
    async def main() -> None:
        task = asyncio.get_running_loop().create_task(looping(swallow=1))
        await asyncio.sleep(0.02)
        waiter = asyncio.ensure_future(cancel(task))
        done, _ = await asyncio.wait({waiter}, timeout=5.0)
        assert waiter in done, "cancel() waits for ever on a task that swallowed a cancel"
        assert task.cancelled()

    asyncio.run(main())


def test_a_plain_task_ends_and_none_is_fine() -> None:
    async def main() -> None:
        task = asyncio.get_running_loop().create_task(looping(swallow=0))
        await asyncio.sleep(0.02)
        await cancel(task)
        assert task.cancelled()
        await cancel(None)

    asyncio.run(main())


def test_what_the_task_failed_with_is_raised() -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(broken())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="a bug"):
            await cancel(task)

    asyncio.run(main())
