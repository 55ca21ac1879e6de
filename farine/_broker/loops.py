"""The few backend-specific lines: reaching an event loop (asyncio or trio) from any thread.

Deliveries come from a broker connection that may run elsewhere (aiormq on its own
asyncio loop in a thread, for scripts with no runtime; the in-memory broker called
from a worker thread) and must land on the loop of the consumer that waits for them;
the results of `def` handlers come back from worker threads (`farine._workers`).
`LoopHandle` schedules a callback on one loop from any thread; `Handoff` batches items
for it, so a burst of deliveries (or acks) costs one crossing, not one per item;
`Reply` is one result, waited for by one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import outcome
import trio

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable

__all__ = (
    "Handoff",
    "LoopHandle",
    "Reply",
    "Wakeup",
    "call_in_task",
    "defer_wakes_on",
    "now",
    "running_backend",
    "stop_deferring_wakes",
    "wait_future",
)

logger = logging.getLogger("farine.amqp")

T = TypeVar("T")


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None (in a trio task: the engine loop of the trio
    backend runs only in steps of its own)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def call_in_task(callback: Callable[[], object]) -> None:
    """Call `callback()` in a task of the running loop: now, or in a new asyncio task.

    For code that needs a task (starting one in an anyio task group tells the backend
    by the current task) but may run in a plain callback of an asyncio loop. trio runs
    its callbacks in a task of its own: there, and in any task, the call is immediate.
    """
    loop = _running_asyncio_loop()
    if loop is None or asyncio.current_task(loop) is not None:
        callback()
        return

    async def call() -> None:
        callback()

    task = loop.create_task(call())
    _calling.add(task)  # the loop holds tasks weakly
    task.add_done_callback(_calling.discard)


_calling: set[asyncio.Task[None]] = set()


def running_backend() -> Literal["asyncio", "trio"]:
    """The anyio backend of the calling task: `"asyncio"` or `"trio"`."""
    return "trio" if _running_asyncio_loop() is None else "asyncio"


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
    """

    __slots__ = (
        "__weakref__",
        "_asyncio_loop_ref",
        "_lock",
        "_pending",
        "_scheduled",
        "_stopped",
        "_trio_token",
        "thread_id",
    )

    def __init__(
        self,
        *,
        asyncio_loop: asyncio.AbstractEventLoop | None = None,
        trio_token: trio.lowlevel.TrioToken | None = None,
        thread_id: int,
    ) -> None:
        # A weak reference: handles are cached per loop, and must not keep it alive.
        self._asyncio_loop_ref = None if asyncio_loop is None else weakref.ref(asyncio_loop)
        self._trio_token = trio_token
        self.thread_id = thread_id
        self._lock = threading.Lock()
        self._pending: deque[Callable[[], object]] = deque()
        self._scheduled = False
        self._stopped = False

    @classmethod
    def current(cls) -> LoopHandle:
        """Return the handle of the loop running in this thread.

        Raises:
            RuntimeError: No asyncio or trio loop runs in this thread.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return cls.of_asyncio_loop(loop, threading.get_ident())
        try:
            return _trio_handle.get()
        except LookupError:
            pass
        except RuntimeError:
            raise RuntimeError("no asyncio or trio event loop runs in this thread") from None
        handle = cls(trio_token=trio.lowlevel.current_trio_token(), thread_id=threading.get_ident())
        _trio_handle.set(handle)
        return handle

    @classmethod
    def of_asyncio_loop(cls, loop: asyncio.AbstractEventLoop, thread_id: int) -> LoopHandle:
        """Return the handle of an asyncio loop running in thread `thread_id`."""
        with _asyncio_handles_lock:
            handle = _asyncio_handles.get(loop)
            if handle is None:
                handle = cls(asyncio_loop=loop, thread_id=thread_id)
                _asyncio_handles[loop] = handle
            return handle

    @property
    def is_asyncio(self) -> bool:
        """True for an asyncio loop."""
        return self._asyncio_loop_ref is not None

    def in_loop_thread(self) -> bool:
        """True when called from the thread running this loop."""
        return threading.get_ident() == self.thread_id

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
        thread_id = threading.get_ident()
        poster = _deferring_loops.get(thread_id)
        if poster is not None and thread_id != self.thread_id:
            loop = poster()
            if loop is not None and not loop.is_closed():
                loop.call_soon(self._wake)
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
        try:
            if self._asyncio_loop_ref is not None:
                loop = self._asyncio_loop_ref()
                if loop is None:
                    raise RuntimeError("event loop collected")
                if threading.get_ident() == self.thread_id:
                    loop.call_soon(self._run_pending)
                else:
                    loop.call_soon_threadsafe(self._run_pending)
            else:
                assert self._trio_token is not None
                self._trio_token.run_sync_soon(self._run_pending)
        except (RuntimeError, trio.RunFinishedError):  # the loop is closed: nobody to run them
            with self._lock:
                self._stopped = True
                self._pending.clear()
                self._scheduled = False
            return False
        return True

    def _run_pending(self) -> None:
        with self._lock:
            batch = self._pending
            self._pending = deque()
            self._scheduled = False
        for callback in batch:
            try:
                callback()
            except Exception:  # one failing callback must not lose the others (nor kill trio)
                logger.exception("callback %r failed", callback)


_trio_handle: trio.lowlevel.RunVar[LoopHandle] = trio.lowlevel.RunVar("farine_loop_handle")
_asyncio_handles: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopHandle] = (
    weakref.WeakKeyDictionary()
)
_asyncio_handles_lock = threading.Lock()
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


class Reply(Generic[T]):
    """The result of work done in another thread, for the task that waits for it.

    Created and awaited by one task (asyncio or trio). `send()` or `throw()` may be
    called once, from any thread: the task is resumed through its loop's handle,
    together with the other crossings of the same burst (on trio with no `trio.Event`
    in between; on asyncio through one future).
    """

    __slots__ = ("_done", "_future", "_home", "_task")

    def __init__(self) -> None:
        self._home = home = LoopHandle.current()
        self._done = False
        if home.is_asyncio:
            self._future: asyncio.Future[T] | None = asyncio.get_running_loop().create_future()
            self._task: trio.lowlevel.Task | None = None
        else:
            self._future = None
            self._task = trio.lowlevel.current_task()

    @property
    def home(self) -> LoopHandle:
        """The handle of the waiting task's loop."""
        return self._home

    def send(self, value: T) -> None:
        """Resume the waiting task with `value`."""
        self._home.call_soon(functools.partial(self._resume, outcome.Value(value)))

    def throw(self, exc: BaseException) -> None:
        """Resume the waiting task by raising `exc` in it."""
        self._home.call_soon(functools.partial(self._resume, outcome.Error(exc)))

    def _resume(self, result: outcome.Outcome[T]) -> None:
        if self._done:  # the wait was cancelled: nobody wants the result
            return
        self._done = True
        future = self._future
        if future is None:
            assert self._task is not None
            trio.lowlevel.reschedule(self._task, result)
        elif future.done():
            return  # cancelled with its task, which has not run its `except` yet
        elif isinstance(result, outcome.Error):
            future.set_exception(result.error)
        else:
            future.set_result(result.unwrap())

    async def wait(self, on_cancel: Callable[[], object]) -> T:
        """Wait for the result; when cancelled, call `on_cancel()` and raise at once."""
        future = self._future
        if future is not None:
            try:
                return await future
            except asyncio.CancelledError:
                if not self._done:
                    self._done = True
                    on_cancel()
                raise

        def abort(_: object) -> trio.lowlevel.Abort:
            self._done = True
            on_cancel()
            return trio.lowlevel.Abort.SUCCEEDED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result


class Wakeup:
    """A one-shot wake-up of one task, set by code on the same loop (asyncio or trio).

    What `anyio.Event` does for one waiter, for less: a flag, and an asyncio future or
    a trio task parked until it is set. `set()` may come before, during or after the
    wait, even after the wait was cancelled (`is_set()` then tells). `wait()` returns at
    once, with no checkpoint, when already set.
    """

    __slots__ = ("_flag", "_future", "_task")

    def __init__(self) -> None:
        self._flag = False
        self._task: trio.lowlevel.Task | None = None
        # None on trio (its asyncio engine loop only runs in steps of its own), cheaply.
        loop = _running_asyncio_loop()
        self._future: asyncio.Future[None] | None = None if loop is None else loop.create_future()

    def set(self) -> None:
        """Wake the waiting task, if any (no-op once set)."""
        if self._flag:
            return
        self._flag = True
        future = self._future
        if future is not None:
            if not future.done():  # else its wait was cancelled
                future.set_result(None)
        elif self._task is not None:
            task, self._task = self._task, None
            trio.lowlevel.reschedule(task)

    def is_set(self) -> bool:
        """True once `set()` was called."""
        return self._flag

    async def wait(self) -> None:
        """Return once set."""
        if self._flag:
            return
        future = self._future
        if future is not None:
            await future
            return
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


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


def now() -> float:
    """`anyio.current_time()`, for a fraction of its cost (which adds up per message).

    The running loop's clock: asyncio's `loop.time()`, or `trio.current_time()` in a
    trio task (where no asyncio loop is running: the engine loop of the trio backend
    runs only in steps of its own).
    """
    loop = _running_asyncio_loop()
    return loop.time() if loop is not None else trio.current_time()
