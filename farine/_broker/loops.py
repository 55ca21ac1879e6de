"""Reaching an event loop (asyncio or trio) from any thread, in code that serves both.

Deliveries come from a broker connection that may run elsewhere (aiormq on its own
asyncio loop in a thread, for scripts with no runtime; the in-memory broker called
from a worker thread) and must land on the loop of the consumer that waits for them;
the results of `def` handlers come back from worker threads (`farine._workers`).
`LoopHandle` schedules a callback on one loop from any thread; `Handoff` batches items
for it, so a burst of deliveries (or acks) costs one crossing, not one per item;
`Reply` is one result, waited for by one task; `Wakeup` wakes one task.

The backend-specific lines live in `asyncio_loop` and `trio_loop`, which offer the
same small interface: a `Waker` (schedule a callback on its loop from any thread), a
`Parked` task (wait, resume with a value or an error, cancel), `wait_future()`, `now()`,
`call_in_task()`, `spawn()`. This module picks one by the loop running in the calling
thread.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from farine._broker import asyncio_loop, trio_loop

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures
    from collections.abc import Callable, Coroutine

__all__ = (
    "Handoff",
    "LoopHandle",
    "Reply",
    "Wakeup",
    "call_in_task",
    "defer_wakes_on",
    "now",
    "running_backend",
    "spawn",
    "stop_deferring_wakes",
    "wait_future",
)

logger = logging.getLogger("farine.amqp")

T = TypeVar("T")

#: `defer_wakes_on()`, `stop_deferring_wakes()`: engine threads batch their wake-ups.
defer_wakes_on = asyncio_loop.defer_wakes_on
stop_deferring_wakes = asyncio_loop.stop_deferring_wakes


class _Waker(Protocol):
    """What `LoopHandle` needs of a backend: schedule a callback on one loop."""

    @property
    def thread_id(self) -> int: ...

    def schedule(self, callback: Callable[[], object]) -> bool: ...


def running_backend() -> Literal["asyncio", "trio"]:
    """The anyio backend of the calling task: `"asyncio"` or `"trio"`."""
    return "trio" if asyncio_loop.running_loop() is None else "asyncio"


def call_in_task(callback: Callable[[], object]) -> None:
    """Call `callback()` in a task of the running loop: now, or in a new asyncio task.

    For code that needs a task (starting one in an anyio task group tells the backend
    by the current task) but may run in a plain callback of an asyncio loop. trio runs
    its callbacks in a task of its own: there, and in any task, the call is immediate.
    """
    loop = asyncio_loop.running_loop()
    if loop is None:
        trio_loop.call_in_task(callback)
    else:
        asyncio_loop.call_in_task(loop, callback)


def spawn(func: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run `func()` in a new task of the running loop that belongs to no caller: it
    runs until it returns, or is cancelled when the loop ends. `func` must handle its
    own errors (on trio, one it lets out ends the run)."""
    loop = asyncio_loop.running_loop()
    if loop is None:
        trio_loop.spawn(func)
    else:
        asyncio_loop.spawn(loop, func)


class LoopHandle:
    """Schedules callbacks on one event loop (asyncio or trio) from any thread.

    There is one handle per loop (`current()` returns the same one each time), holding
    one queue of callbacks and at most one pending wake-up of its loop: everything that
    crosses into a loop from another thread (deliveries of all its consumers, results of
    its calls to the AMQP engine, acks sent to the engine) shares it. Waking a loop from
    another thread costs a system call and a GIL hand-off, about as much as the work
    itself; this way a burst costs one, not one per item.

    When the posting thread is the AMQP engine's (see `defer_wakes_on()`), the wake-up
    waits until the engine loop has run the callbacks it has ready, so everything one
    batch of frames produces (confirms, deliveries) crosses at once.

    Args:
        waker: The backend's `Waker` of the loop (`asyncio_loop` or `trio_loop`).
    """

    __slots__ = ("__weakref__", "_lock", "_pending", "_scheduled", "_stopped", "waker")

    def __init__(self, waker: _Waker) -> None:
        self.waker = waker
        self._lock = threading.Lock()
        self._pending: list[Callable[[], object]] = []
        self._scheduled = False
        self._stopped = False

    @classmethod
    def current(cls) -> LoopHandle:
        """Return the handle of the loop running in this thread.

        Raises:
            RuntimeError: No asyncio or trio loop runs in this thread.
        """
        loop = asyncio_loop.running_loop()
        if loop is not None:
            return asyncio_loop.handle_of_loop(loop, threading.get_ident(), cls)
        try:
            return trio_loop.handle_of_run(cls)
        except RuntimeError:
            raise RuntimeError("no asyncio or trio event loop runs in this thread") from None

    @classmethod
    def of_asyncio_loop(cls, loop: asyncio.AbstractEventLoop, thread_id: int) -> LoopHandle:
        """Return the handle of an asyncio loop running in thread `thread_id`."""
        return asyncio_loop.handle_of_loop(loop, thread_id, cls)

    @property
    def is_asyncio(self) -> bool:
        """True for an asyncio loop."""
        return isinstance(self.waker, asyncio_loop.Waker)

    @property
    def thread_id(self) -> int:
        """The thread running the loop."""
        return self.waker.thread_id

    def in_loop_thread(self) -> bool:
        """True when called from the thread running this loop."""
        return threading.get_ident() == self.waker.thread_id

    def call_soon(self, callback: Callable[[], object]) -> bool:
        """Schedule `callback()` on the loop; return False if the loop has stopped.

        Callbacks run in the order they were scheduled. One that raises is logged.
        """
        with self._lock:
            if self._stopped:
                return False
            self._pending.append(callback)
            if self._scheduled:
                return True
            self._scheduled = True
        if not self.in_loop_thread():
            poster = asyncio_loop.deferring_loop()
            if poster is not None:
                poster.call_soon(self._wake)
                return True
        return self._wake()

    def call_soon_lazily(self, callback: Callable[[], object]) -> bool:
        """Like `call_soon()`, without waking the loop: it runs at its next wake-up.

        For work that may wait a little (acks) when something else on the loop
        guarantees a wake-up soon (a timer): it then rides along with urgent work.
        """
        with self._lock:
            if self._stopped:
                return False
            self._pending.append(callback)
        return True

    def _wake(self) -> bool:
        if self.waker.schedule(self._run_pending):
            return True
        with self._lock:  # the loop is closed: nobody to run them
            self._stopped = True
            self._pending.clear()
            self._scheduled = False
        return False

    def _run_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._scheduled = False
        for callback in batch:
            try:
                callback()
            except Exception:  # one failing callback must not lose the others (nor kill trio)
                logger.exception("callback %r failed", callback)


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
        self._items: list[T] = []
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
            batch, self._items = self._items, []
            self._scheduled = False
        if batch:
            self.sink(batch)


def _parked() -> asyncio_loop.Parked[T] | trio_loop.Parked[T]:
    """A parked task of the running backend, created by the task that will wait."""
    return trio_loop.Parked() if asyncio_loop.running_loop() is None else asyncio_loop.Parked()


class Reply(Generic[T]):
    """The result of work done in another thread, for the task that waits for it.

    Created and awaited by one task (asyncio or trio). `send()` or `throw()` may be
    called once, from any thread: the task is resumed through its loop's handle,
    together with the other crossings of the same burst (on trio with no `trio.Event`
    in between; on asyncio through one future).
    """

    __slots__ = ("_done", "_home", "_parked")

    def __init__(self) -> None:
        self._home = LoopHandle.current()
        self._done = False
        self._parked: asyncio_loop.Parked[T] | trio_loop.Parked[T] = _parked()

    @property
    def home(self) -> LoopHandle:
        """The handle of the waiting task's loop."""
        return self._home

    def send(self, value: T) -> None:
        """Resume the waiting task with `value`."""
        self._home.call_soon(functools.partial(self._resume, value))

    def throw(self, exc: BaseException) -> None:
        """Resume the waiting task by raising `exc` in it."""
        self._home.call_soon(functools.partial(self._fail, exc))

    def _resume(self, value: T) -> None:
        if not self._done:  # else the wait was cancelled: nobody wants the result
            self._done = True
            self._parked.resume(value)

    def _fail(self, exc: BaseException) -> None:
        if not self._done:
            self._done = True
            self._parked.fail(exc)

    async def wait(self, on_cancel: Callable[[], object]) -> T:
        """Wait for the result; when cancelled, call `on_cancel()` and raise at once."""

        def cancelled() -> None:
            if not self._done:
                self._done = True
                on_cancel()

        return await self._parked.wait(cancelled)


class Wakeup:
    """A one-shot wake-up of one task, set by code on the same loop (asyncio or trio).

    What `anyio.Event` does for one waiter, for less: a flag, and a task parked until
    it is set. `set()` may come before, during or after the wait, even after the wait
    was cancelled (`is_set()` then tells). `wait()` returns at once, with no
    checkpoint, when already set.
    """

    __slots__ = ("_flag", "_parked")

    def __init__(self) -> None:
        self._flag = False
        self._parked: asyncio_loop.Parked[None] | trio_loop.Parked[None] = _parked()

    def set(self) -> None:
        """Wake the waiting task, if any (no-op once set)."""
        if self._flag:
            return
        self._flag = True
        self._parked.resume(None)

    def is_set(self) -> bool:
        """True once `set()` was called."""
        return self._flag

    async def wait(self) -> None:
        """Return once set."""
        if self._flag:
            return
        await self._parked.wait(_nothing)


def _nothing() -> None:
    return None


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Await a `concurrent.futures.Future` from asyncio or trio; cancelling cancels it."""
    if asyncio_loop.running_loop() is None:
        return await trio_loop.wait_future(future)
    return await asyncio_loop.wait_future(future)


def now() -> float:
    """`anyio.current_time()`, for a fraction of its cost (which adds up per message).

    The running loop's clock: asyncio's `loop.time()`, or `trio.current_time()` in a
    trio task (where no asyncio loop is running: the engine loop of the trio backend
    runs only in steps of its own).
    """
    loop = asyncio_loop.running_loop()
    return trio_loop.now() if loop is None else asyncio_loop.now(loop)
