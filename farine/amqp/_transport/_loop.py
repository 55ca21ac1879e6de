"""The few backend-specific lines: reaching an event loop (asyncio or trio) from any thread.

Deliveries come from a broker connection that may run elsewhere (aiormq on its own
asyncio loop in a thread when the service runs on trio; the in-memory broker called
from a worker thread) and must land on the loop of the consumer that waits for them.
`LoopHandle` schedules a callback on one loop from any thread; `Handoff` batches items
for it, so a burst of deliveries (or acks) costs one crossing, not one per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable

__all__ = ("Handoff", "LoopHandle", "wait_future")

T = TypeVar("T")


class LoopHandle:
    """Schedules callbacks on one event loop (asyncio or trio) from any thread."""

    __slots__ = ("_asyncio_loop", "_trio_token", "thread_id")

    def __init__(
        self,
        *,
        asyncio_loop: asyncio.AbstractEventLoop | None = None,
        trio_token: trio.lowlevel.TrioToken | None = None,
        thread_id: int,
    ) -> None:
        self._asyncio_loop = asyncio_loop
        self._trio_token = trio_token
        self.thread_id = thread_id

    @classmethod
    def current(cls) -> LoopHandle:
        """Return the handle of the loop running in this thread.

        Raises:
            RuntimeError: No asyncio or trio loop runs in this thread.
        """
        thread_id = threading.get_ident()
        try:
            return cls(asyncio_loop=asyncio.get_running_loop(), thread_id=thread_id)
        except RuntimeError:
            pass
        try:
            return cls(trio_token=trio.lowlevel.current_trio_token(), thread_id=thread_id)
        except RuntimeError:
            raise RuntimeError("no asyncio or trio event loop runs in this thread") from None

    @classmethod
    def of_asyncio_loop(cls, loop: asyncio.AbstractEventLoop, thread_id: int) -> LoopHandle:
        """Return the handle of an asyncio loop running in thread `thread_id`."""
        return cls(asyncio_loop=loop, thread_id=thread_id)

    @property
    def is_asyncio(self) -> bool:
        """True for an asyncio loop."""
        return self._asyncio_loop is not None

    def in_loop_thread(self) -> bool:
        """True when called from the thread running this loop."""
        return threading.get_ident() == self.thread_id

    def call_soon(self, callback: Callable[[], object]) -> bool:
        """Schedule `callback()` on the loop; return False if the loop has stopped."""
        loop = self._asyncio_loop
        if loop is not None:
            if loop.is_closed():
                return False
            try:
                if threading.get_ident() == self.thread_id:
                    loop.call_soon(callback)
                else:
                    loop.call_soon_threadsafe(callback)
            except RuntimeError:  # closed between the check and the call
                return False
            return True
        assert self._trio_token is not None
        try:
            self._trio_token.run_sync_soon(callback)
        except trio.RunFinishedError:
            return False
        return True


class Handoff(Generic[T]):
    """Hands items to a sink running on one loop, from any thread, in batches.

    `push()` appends under a lock and schedules one drain if none is pending, so a
    burst of pushes costs one wake-up of the loop. Items keep their order.

    Args:
        home: The loop the sink runs on.
        sink: Called on that loop with each batch, in order.
    """

    __slots__ = ("_items", "_lock", "_scheduled", "home", "sink")

    def __init__(self, home: LoopHandle, sink: Callable[[list[T]], None]) -> None:
        self.home = home
        self.sink = sink
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def push(self, item: T) -> None:
        """Hand `item` to the sink (directly when already on its loop and nothing waits)."""
        schedule = False
        with self._lock:
            if not self._scheduled and self.home.in_loop_thread():
                direct = True
            else:
                direct = False
                self._items.append(item)
                schedule = not self._scheduled
                self._scheduled = True
        if direct:
            self.sink([item])
        elif schedule and not self.home.call_soon(self._drain):
            with self._lock:
                self._items.clear()
                self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            batch = list(self._items)
            self._items.clear()
            self._scheduled = False
        if batch:
            self.sink(batch)


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Await a `concurrent.futures.Future` from asyncio or trio; cancelling cancels it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return await asyncio.wrap_future(future)
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future[T]) -> None:
        # The caller's loop may be gone: then nobody waits any more.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except trio.Cancelled:
        future.cancel()
        raise
    return future.result()
