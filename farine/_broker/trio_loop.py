"""The trio side of `farine._broker.loops`: waking a trio run, parking a task in it.

The same names as `farine._broker.asyncio_loop` (`Waker`, `Parked`, `wait_future`,
`now`, `call_in_task`), which `loops` picks by the running loop.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import outcome
import trio

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable, Coroutine

__all__ = ("Parked", "Waker", "call_in_task", "handle_of_run", "now", "spawn", "wait_future")

T = TypeVar("T")
H = TypeVar("H")


class Waker:
    """Schedules callbacks on one trio run, from any thread."""

    __slots__ = ("_token", "thread_id")

    def __init__(self, token: trio.lowlevel.TrioToken, thread_id: int) -> None:
        self._token = token
        self.thread_id = thread_id

    @property
    def token(self) -> trio.lowlevel.TrioToken:
        """The run's token."""
        return self._token

    def schedule(self, callback: Callable[[], object]) -> bool:
        """Have the run call `callback()`; False once the run has finished."""
        try:
            self._token.run_sync_soon(callback)
        except (RuntimeError, trio.RunFinishedError):
            return False
        return True


class Parked(Generic[T]):
    """One task waiting in its run for a result set by code in the same run.

    Created by the task that will wait. `resume()` or `fail()` before the wait makes
    the wait return (or raise) at once; after a cancelled wait, they do nothing.
    """

    __slots__ = ("_early", "_task")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._early: outcome.Outcome[T] | None = None

    def resume(self, value: T) -> None:
        """Resume the waiting task with `value`."""
        self._settle(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        """Resume the waiting task by raising `error` in it."""
        self._settle(outcome.Error(error))

    def _settle(self, result: outcome.Outcome[T]) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task, result)
        else:
            self._early = result

    async def wait(self, on_cancel: Callable[[], object]) -> T:
        """Wait to be resumed; when cancelled first, call `on_cancel()` and raise."""
        early = self._early
        if early is not None:
            return early.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._task = None
            on_cancel()
            return trio.lowlevel.Abort.SUCCEEDED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Await a `concurrent.futures.Future`; cancelling cancels it."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future[T]) -> None:
        # The caller's run may be over: then nobody waits any more.
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
    """The run's clock."""
    return trio.current_time()


def call_in_task(callback: Callable[[], object]) -> None:
    """Call `callback()`: trio runs even its callbacks in a task."""
    callback()


def spawn(func: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run `func()` in a new system task of the trio run: it belongs to no caller, and
    is cancelled when the run ends. What it raises, other than its cancellation, ends
    the run: `func` must handle its own errors."""
    trio.lowlevel.spawn_system_task(func)


_handles: trio.lowlevel.RunVar[object] = trio.lowlevel.RunVar("farine_loop_handle")


def handle_of_run(make: Callable[[Waker], H]) -> H:
    """The handle of the trio run in this thread, made once per run by `make(waker)`.

    Raises:
        RuntimeError: No trio run in this thread.
    """
    try:
        return cast("H", _handles.get())
    except LookupError:
        pass
    handle = make(Waker(trio.lowlevel.current_trio_token(), threading.get_ident()))
    _handles.set(handle)
    return handle
