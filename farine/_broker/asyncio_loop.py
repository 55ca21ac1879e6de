"""The asyncio side of `farine._broker.loops`: waking an asyncio loop, parking a task on it.

The same names as `farine._broker.trio_loop` (`Waker`, `Parked`, `wait_future`, `now`,
`call_in_task`), which `loops` picks by the running loop; and the engine threads'
batching of the wake-ups they send (`defer_wakes_on()`).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable, Coroutine

__all__ = (
    "Parked",
    "Waker",
    "call_in_task",
    "defer_wakes_on",
    "deferring_loop",
    "handle_of_loop",
    "now",
    "running_loop",
    "spawn",
    "stop_deferring_wakes",
    "wait_future",
)

T = TypeVar("T")
H = TypeVar("H")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running in this thread, or None (in a trio task: the engine loop
    of the trio backend runs only in steps of its own)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Waker:
    """Schedules callbacks on one asyncio loop, from any thread."""

    __slots__ = ("_loop_ref", "thread_id")

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        # A weak reference: handles are cached per loop, and must not keep it alive.
        self._loop_ref = weakref.ref(loop)
        self.thread_id = thread_id

    def schedule(self, callback: Callable[[], object]) -> bool:
        """Have the loop call `callback()`; False when the loop is closed or gone."""
        loop = self._loop_ref()
        if loop is None:
            return False
        try:
            if threading.get_ident() == self.thread_id:
                loop.call_soon(callback)
            else:
                loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed
            return False
        return True


class Parked(Generic[T]):
    """One task waiting on its loop for a result set by code on the same loop.

    Created by the task that will wait. `resume()` or `fail()` before the wait makes
    the wait return (or raise) at once; after a cancelled wait, they do nothing.
    """

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

    def resume(self, value: T) -> None:
        """Resume the waiting task with `value`."""
        future = self._future
        if not future.done():  # else cancelled with its task, or resumed already
            future.set_result(value)

    def fail(self, error: BaseException) -> None:
        """Resume the waiting task by raising `error` in it."""
        future = self._future
        if not future.done():
            future.set_exception(error)

    async def wait(self, on_cancel: Callable[[], object]) -> T:
        """Wait to be resumed; when cancelled first, call `on_cancel()` and raise."""
        try:
            return await self._future
        except asyncio.CancelledError:
            on_cancel()
            raise


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Await a `concurrent.futures.Future`; cancelling cancels it."""
    return await asyncio.wrap_future(future)


def now(loop: asyncio.AbstractEventLoop) -> float:
    """The loop's clock."""
    return loop.time()


def call_in_task(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Call `callback()` in a task of `loop`: now from a task, else in a new one."""
    if asyncio.current_task(loop) is not None:
        callback()
        return

    async def call() -> None:
        callback()

    spawn(loop, call)


_calling: set[asyncio.Task[object]] = set()


def spawn(loop: asyncio.AbstractEventLoop, func: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run `func()` in a new task of `loop` that belongs to no caller: it runs until it
    returns, or is cancelled when the loop ends."""
    task = loop.create_task(func())
    _calling.add(task)  # the loop holds tasks weakly
    task.add_done_callback(_calling.discard)


_handles: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object] = weakref.WeakKeyDictionary()
_handles_lock = threading.Lock()


def handle_of_loop(
    loop: asyncio.AbstractEventLoop, thread_id: int, make: Callable[[Waker], H]
) -> H:
    """The handle of `loop` (running in thread `thread_id`), made once by `make(waker)`."""
    with _handles_lock:
        handle = _handles.get(loop)
        if handle is None:
            handle = _handles[loop] = make(Waker(loop, thread_id))
        return cast("H", handle)


# Threads whose asyncio loop batches the wake-ups it sends to other loops (thread id ->
# loop): the AMQP engine threads. Other threads wake at once: a thread that blocks right
# after scheduling a callback must not delay (or deadlock) it.
_deferring_loops: dict[int, weakref.ref[asyncio.AbstractEventLoop]] = {}


def defer_wakes_on(loop: asyncio.AbstractEventLoop) -> None:
    """Batch the wake-ups sent from this thread, which runs `loop`, until it stops."""
    _deferring_loops[threading.get_ident()] = weakref.ref(loop)


def stop_deferring_wakes() -> None:
    """Undo `defer_wakes_on()` for this thread (its loop is stopping)."""
    _deferring_loops.pop(threading.get_ident(), None)


def deferring_loop() -> asyncio.AbstractEventLoop | None:
    """The open loop of this thread if it batches its wake-ups (`defer_wakes_on()`)."""
    ref = _deferring_loops.get(threading.get_ident())
    loop = None if ref is None else ref()
    return None if loop is None or loop.is_closed() else loop
