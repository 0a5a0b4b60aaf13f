"""Libvirt's event loop on asyncio, callable from any thread (for `libvirt_guests`).

Libvirt's event loop is process-global: `virEventRegisterImpl` may run once per process
(libvirt-python 12.8 raises "Event loop is already registered" on a second call). We register
libvirtaio's asyncio implementation once, on the loop that first opens a connection, as a
thread-safe subclass (`libvirtaio.virEventRegisterAsyncIOImpl()` would register the stock
class, which cannot be swapped afterwards). Stock libvirtaio is not thread-safe, while
libvirt calls into the event implementation from whichever thread runs a libvirt call (here the
`to_thread` workers): e.g. `create()` queues a lifecycle event and re-arms a timer from the
worker, and every remote RPC toggles the socket watch from the calling thread. With
`PYTHONASYNCIODEBUG=1` stock libvirtaio fails with "Non-thread-safe operation invoked on an event
loop other than the current one" and the event never arrives. Without debug mode it creates the
timer task from the foreign thread without waking the loop, and the event is only dispatched
because the completion of that same `to_thread` call happens to wake it.
`ThreadSafeEventImpl` therefore marshals every operation that touches the asyncio loop onto the
loop thread, in call order, without ever blocking the calling thread (blocking would deadlock:
libvirt holds its client lock while calling us, and the loop thread may be waiting for that lock
inside a libvirt callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt
import libvirtaio

__all__ = ["ThreadSafeEventImpl", "bind_event_impl"]

log = logging.getLogger(__name__)


class ThreadSafeEventImpl(libvirtaio.virEventAsyncIOImpl):
    """libvirtaio's asyncio event implementation, safe to call from any thread.

    Libvirt calls the six `_add/_update/_remove_handle/timeout` hooks from whichever thread runs
    a libvirt call. Called on the loop thread, an operation runs at once (after any queued
    ones, to keep the order). Called from another thread, its bookkeeping that must return a
    value (the watch/timer id) happens at once and everything that touches the asyncio loop is
    queued and handed to the loop with `call_soon_threadsafe`. While the bound loop is closed
    (between two `asyncio.run`s), operations are parked until `rebind`. Nothing here ever blocks
    the calling thread, and no libvirt function is called while `_lock` is held.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._lock = threading.Lock()
        self._queue: list[Callable[[], None]] = []
        self._loop_thread = threading.get_ident()
        self._ff_tasks: set[asyncio.Task[None]] = set()

    # Binding to a loop.

    def rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move to `loop` (called on that loop's thread; the old loop must not be running).

        Only legal while nothing is registered on the old loop: its handles and timers died
        with it. Operations parked since the old loop closed (a libvirt client used between
        two loops, e.g. a test's raw connection) are replayed here, in order.
        """
        if not self.is_idle():
            raise RuntimeError(
                "libvirt's event implementation still has handles or timers on another event "
                "loop; close every LibvirtHypervisor before opening one on a new loop"
            )
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self._flush()

    async def settle(self, timeout_s: float) -> None:
        """Let queued operations and deferred frees run, so that libvirt releases what a closed
        connection held (its socket is only closed by the free callback). Returns early once
        nothing is queued; other open connections keep their handles and do not delay it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                queued = bool(self._queue)
            if not queued and not self._ff_tasks:
                return
            await asyncio.sleep(0.005)

    # Marshalling.

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _submit(self, operation: Callable[[], None]) -> None:
        closed = self.loop.is_closed()
        if self._on_loop_thread() and not closed:
            self._flush()
            self._execute(operation)
            return
        with self._lock:
            self._queue.append(operation)
            first = len(self._queue) == 1
        if first and not closed:
            # A loop that closed in the meantime refuses; the operation stays parked until
            # `rebind` replays it on the next loop.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            operations, self._queue = self._queue, []
        for operation in operations:
            self._execute(operation)

    def _execute(self, operation: Callable[[], None]) -> None:
        try:
            operation()
        except Exception:
            # An exception must not propagate into libvirt's C code; libvirtaio raises
            # KeyError for an update of a watch that libvirt already removed.
            log.exception("libvirt event loop operation failed")

    # The six hooks libvirt calls.

    def _add_handle(
        self, fd: int, event: int, cb: Callable[[int, int, int, Any], None], opaque: Any
    ) -> int:
        callback = libvirtaio.FDCallback(self, cb, opaque, descriptor=None, event=event)

        def add() -> None:
            descriptor = self.descriptors[fd]
            callback.descriptor = descriptor
            self.callbacks[callback.iden] = callback
            descriptor.add_handle(callback)
            self._pending_inc()

        self._submit(add)
        return callback.iden

    def _update_handle(self, watch: int, event: int) -> None:
        self._submit(functools.partial(super()._update_handle, watch, event))

    def _remove_handle(self, watch: int) -> int:
        self._submit(functools.partial(self._remove_quietly, super()._remove_handle, watch))
        return 0

    def _add_timeout(self, timeout: int, cb: Callable[[int, Any], None], opaque: Any) -> int:
        callback = libvirtaio.TimeoutCallback(self, cb, opaque)

        def add() -> None:
            self.callbacks[callback.iden] = callback
            callback.update(timeout=timeout)
            self._pending_inc()

        self._submit(add)
        return callback.iden

    def _update_timeout(self, timer: int, timeout: int) -> None:
        self._submit(functools.partial(super()._update_timeout, timer, timeout))

    def _remove_timeout(self, timer: int) -> int:
        self._submit(functools.partial(self._remove_quietly, super()._remove_timeout, timer))
        return 0

    @staticmethod
    def _remove_quietly(remove: Callable[[int], int], iden: int) -> None:
        # Libvirt ignores the status of a removal; a queued operation has nowhere to return it.
        remove(iden)

    # Free callbacks: counted so that `settle` knows when libvirt got its objects back.

    def schedule_ff_callback(self, iden: int, opaque: Any) -> None:
        # Always called on the loop thread: removals run there (see `_submit`). The task is
        # kept referenced until it ran: asyncio holds only weak references to tasks.
        task = self.loop.create_task(self._free(opaque))
        self._ff_tasks.add(task)
        task.add_done_callback(self._ff_tasks.discard)

    async def _free(self, opaque: Any) -> None:
        # What libvirtaio's free callback does.
        libvirt.virEventInvokeFreeCallback(opaque)
        self._pending_dec()


_event_impl: ThreadSafeEventImpl | None = None
_event_impl_lock = threading.Lock()


def bind_event_impl() -> ThreadSafeEventImpl:
    """Register the asyncio event implementation once per process, on the running loop.

    Must run on the loop thread before the first connection is opened: libvirt only delivers
    events (and close callbacks, and keepalives) through the implementation that was registered
    when the connection was made. A later loop (a second `asyncio.run` in tests, a restarted
    daemon loop) takes the implementation over only when the previous loop left it idle.
    """
    global _event_impl
    loop = asyncio.get_running_loop()
    with _event_impl_lock:
        if _event_impl is None:
            existing = libvirtaio.getCurrentImpl()
            if existing is not None:
                raise RuntimeError(
                    "another libvirtaio event implementation is already registered in this "
                    "process; libvirt accepts only one"
                )
            _event_impl = ThreadSafeEventImpl(loop)
            _event_impl.register()
        elif _event_impl.loop is not loop:
            if _event_impl.loop.is_running():
                raise RuntimeError(
                    "libvirt events are bound to another running event loop; one process "
                    "can serve libvirt events on one loop only"
                )
            _event_impl.rebind(loop)
        return _event_impl
