"""An asyncio event loop run in steps by a trio task, through public asyncio API only.

On the trio backend aiormq still needs an asyncio loop. It runs in trio's own thread,
one step at a time, driven by a trio task:

* a step is `loop.run_forever()`, stopped by the loop's own selector: the selector's
  first `select()` of the step polls without blocking, the next ones let the loop run
  what is ready for a few iterations; then the selector calls `loop.stop()` and records
  the timeout the loop asked for (how long until its next timer; none: only I/O);
* between steps the driver waits, the trio way, for the selector's file descriptor to
  become readable (the broker's socket, and the loop's self-pipe for
  `call_soon_threadsafe()` from other threads), at most until the loop's next timer;
* work that trio code schedules on the loop between steps (`call_soon()`, `call_at()`,
  a task, a future's result) wakes a second task, which runs a step at once.

Nothing is patched and no private name is used: `SelectorEventLoop(selector)`,
`run_forever()`, `stop()`, `call_soon()`/`call_at()` and the selector interface are all
public. Callbacks that the loop runs may call into trio (resume a trio task, put a
delivery in a stream): they run in trio's thread, in a step run by a trio task.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import selectors
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import outcome
import trio

from farine._broker.aiormq.hosts import run_blocking_on
from farine._broker.errors import PublishError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = (
    "LoopDriver",
    "SteppedDriver",
    "SteppedLoop",
    "WakingLoop",
    "create_task_unwoken",
    "wait_future",
    "wait_task",
    "wind_down",
)

logger = logging.getLogger("farine.amqp")

T = TypeVar("T")
L = TypeVar("L", bound="WakingLoop")

#: At most how many loop iterations one step runs while callbacks keep becoming ready.
ITERATIONS_PER_STEP = 16

#: How many steps a stopping driver gives cancelled tasks to finish.
WIND_DOWN_STEPS = 100


def task_result(task: asyncio.Task[T]) -> T:
    """The result of a finished task of the engine loop.

    Raises:
        PublishError: The task was cancelled by the loop stopping.
    """
    if task.cancelled():
        raise PublishError("the AMQP connection is closed")
    return task.result()


async def wait_task(task: asyncio.Task[T]) -> T:
    """Wait, in a trio task, for `task` of a loop run in that trio thread; return its
    result. Cancelling the caller cancels `task`, and the caller does not wait for it.

    Raises:
        PublishError: `task` was cancelled by the loop stopping.
    """
    if task.done():
        await trio.lowlevel.cancel_shielded_checkpoint()
        return task_result(task)
    caller = trio.lowlevel.current_task()
    abandoned = False

    def finished(task: asyncio.Task[T]) -> None:
        if not abandoned:
            trio.lowlevel.reschedule(caller, outcome.capture(task_result, task))

    def abort(_: object) -> trio.lowlevel.Abort:
        nonlocal abandoned
        abandoned = True
        task.cancel()
        return trio.lowlevel.Abort.SUCCEEDED

    task.add_done_callback(finished)
    value: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return value


async def wait_future(future: asyncio.Future[T], on_abandon: Callable[[], object]) -> T:
    """Wait, in a trio task, for `future` of a loop run in that trio thread; return (or
    raise) its result. When the caller is cancelled, `on_abandon()` is called and the
    cancellation raised at once; the future is left to the loop."""
    if future.done():
        await trio.lowlevel.cancel_shielded_checkpoint()
        return future.result()
    caller = trio.lowlevel.current_task()
    abandoned = False

    def finished(future: asyncio.Future[T]) -> None:
        if not abandoned:
            trio.lowlevel.reschedule(caller, outcome.capture(future.result))

    def abort(_: object) -> trio.lowlevel.Abort:
        nonlocal abandoned
        abandoned = True
        future.remove_done_callback(finished)
        on_abandon()
        return trio.lowlevel.Abort.SUCCEEDED

    future.add_done_callback(finished)
    value: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return value


def create_task_unwoken(loop: WakingLoop, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A new task of `loop`, created without waking the driver (the caller steps)."""
    loop.stepping = True
    try:
        return loop.create_task(coro)
    finally:
        loop.stepping = False


async def wind_down(loop: asyncio.AbstractEventLoop, step: Callable[[], None]) -> None:
    """Cancel the tasks still on `loop` and `step()` it until they are done (bounded)."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    for _ in range(WIND_DOWN_STEPS):
        if not tasks:
            return
        step()
        tasks = {task for task in tasks if not task.done()}
        await trio.lowlevel.checkpoint()
    logger.debug("%d AMQP task(s) did not finish when the loop stopped", len(tasks))


class _StepSelector(selectors.DefaultSelector):
    """A selector that never blocks, and ends the step of the loop that owns it."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.poll = True
        self.selects = 0
        #: After a step: the loop's clock when it next has work (None: only on I/O).
        self.next_at: float | None = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.selects += 1
        if self.selects == 1:
            return super().select(0) if self.poll else []
        if timeout == 0 and self.selects <= ITERATIONS_PER_STEP:
            return []  # callbacks are ready: the loop runs them in this step
        loop = self.loop
        assert loop is not None, "the selector belongs to a SteppedLoop"
        self.next_at = None if timeout is None else loop.time() + timeout
        loop.stop()  # this iteration is the step's last
        return []


class WakingLoop(asyncio.SelectorEventLoop):
    """A selector event loop run in steps: work scheduled on it from outside a step, in
    its own thread, calls `wake()` (so that a step runs it soon). Other threads use
    `call_soon_threadsafe()`, which wakes the driver through the loop's self-pipe.

    Args:
        selector: The loop's selector (the driver waits for its file descriptor).
        wake: Called when work was scheduled from outside a step.
        step_in_caller: Runs a step in the caller (see `call_urgent()`); None:
            `call_urgent()` is `call_soon()`.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        wake: Callable[[], None],
        step_in_caller: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(selector)
        self.wake = wake
        self.step_in_caller = step_in_caller
        #: True during a step (and while a caller that steps next schedules work).
        self.stepping = False
        self.thread = threading.get_ident()

    def call_soon(  # type: ignore[override]  # the typeshed signature uses TypeVarTuple
        self,
        callback: Callable[..., object],
        *args: Any,
        context: Any = None,
    ) -> asyncio.Handle:
        handle = super().call_soon(callback, *args, context=context)
        if not self.stepping and threading.get_ident() == self.thread:
            self.wake()
        return handle

    def call_urgent(self, callback: Callable[[], object]) -> None:
        """Schedule `callback` and, called from the loop's thread outside a step (a trio
        task), run it in a step at once, in the caller: for work that someone waits
        for (the last ack the broker needs), one round of trio's scheduler sooner than
        `call_soon()` would have it run."""
        if self.step_in_caller is None or self.stepping or threading.get_ident() != self.thread:
            self.call_soon(callback)
            return
        self.stepping = True  # the step below runs it: no wake-up
        try:
            super().call_soon(callback)
        finally:
            self.stepping = False
        self.step_in_caller()

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: Any = None,
    ) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        if not self.stepping and threading.get_ident() == self.thread:
            self.wake()
        return handle


class SteppedLoop(WakingLoop):
    """A `WakingLoop` stepped through public API (see the module docstring)."""

    def __init__(
        self, wake: Callable[[], None], step_in_caller: Callable[[], None] | None = None
    ) -> None:
        selector = _StepSelector()
        super().__init__(selector, wake, step_in_caller)
        selector.loop = self
        self.step_selector = selector

    def step(self, *, poll: bool = True) -> None:
        """Run what is ready, polling for I/O first (unless `poll` is False), without
        blocking.

        Raises:
            RuntimeError: Called inside a step, or on a closed loop.
        """
        if self.stepping:
            raise RuntimeError("the stepped loop cannot step inside its own step")
        selector = self.step_selector
        selector.poll = poll
        selector.selects = 0
        self.stepping = True
        try:
            self.run_forever()
        finally:
            self.stepping = False

    def next_step_in(self) -> float | None:
        """Seconds until the loop has work, as of its last step (0: now; None: on I/O)."""
        at = self.step_selector.next_at
        if at is None:
            return None
        return max(0.0, at - self.time())


class LoopDriver(abc.ABC, Generic[L]):
    """What both trio drivers share: running coroutines on their loop for trio tasks of
    their run, and for other threads. A driver steps its loop in the caller's task
    (`_step_here()`) and has a second task run what is left (`_wake()`)."""

    loop: L
    thread_id: int
    _stopping: bool

    @abc.abstractmethod
    def _wake(self) -> None:
        """Have the driver's stepper task run a step soon."""

    @abc.abstractmethod
    def _step_here(self) -> bool:
        """Step the loop in the calling task; True if more is ready then."""

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result (for a trio task of this run).

        Cancelling the caller cancels the coroutine; the caller does not wait for it.

        Raises:
            PublishError: The loop is stopping, or stopped before `coro` finished.
        """
        if self._stopping:
            coro.close()
            raise PublishError("the AMQP connection is closed")
        task = create_task_unwoken(self.loop, coro)  # the step below runs it
        # Run the coroutine up to its first real wait now, in the caller's task: a
        # publish writes its frame without waiting for a round of trio's scheduler.
        if self._step_here():
            self._wake()  # the stepper runs the rest
        return await wait_task(task)

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run `coro` on the loop from another thread, blocking until it returns.

        Raises:
            RuntimeError: Called from the loop's own thread (it would wait for itself).
        """
        return run_blocking_on(self.loop, self.thread_id, coro, timeout)


class SteppedDriver(LoopDriver[SteppedLoop]):
    """Owns a `SteppedLoop` and the trio task that drives it.

    `drive()` must run in a task of the trio run that uses the loop; `run()` runs a
    coroutine on the loop for a trio task of that run; `run_blocking()` serves other
    threads. `stop()` ends the driver and closes the loop.
    """

    def __init__(self) -> None:
        self.loop = SteppedLoop(self._wake, self._step_in_caller)
        self.thread_id = threading.get_ident()
        self._woken = trio.Event()
        self._waiting: trio.CancelScope | None = None
        self._stopping = False
        self._done = trio.Event()

    def _wake(self) -> None:
        self._woken.set()

    async def drive(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the loop until `stop()`; immune to cancellation, so that closing works."""
        loop = self.loop
        fd = loop.step_selector.fileno()
        with trio.CancelScope(shield=True):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._step_when_woken)
                    task_status.started()
                    while not self._stopping:
                        loop.step()
                        delay = loop.next_step_in()
                        if delay == 0.0:
                            await trio.lowlevel.checkpoint()  # trio's tasks run, then again
                            continue
                        deadline = math.inf if delay is None else trio.current_time() + delay
                        with trio.CancelScope(deadline=deadline) as waiting:
                            self._waiting = waiting
                            await trio.lowlevel.wait_readable(fd)
                        self._waiting = None
                    self._wake()  # the stepper sees `_stopping` and returns
                await wind_down(loop, loop.step)
            finally:
                self._waiting = None
                trio.lowlevel.notify_closing(fd)  # trio forgets the selector's fd
                with contextlib.suppress(RuntimeError):
                    loop.close()
                self._done.set()

    async def _step_when_woken(self) -> None:
        while not self._stopping:
            await self._woken.wait()
            self._woken = trio.Event()
            while not self._stopping and self._step_here():
                await trio.lowlevel.checkpoint()  # more is ready: trio's tasks run first

    def _step_in_caller(self) -> None:
        """Step in the calling task, and have the stepper run what is left."""
        if not self._stopping and self._step_here():
            self._wake()

    def _step_here(self) -> bool:
        """Step (without polling) in the calling task; True if more is ready then.

        The driver's wait is shortened to the loop's next timer, if that comes sooner.
        """
        loop = self.loop
        loop.step(poll=False)
        delay = loop.next_step_in()
        if delay is None:
            return False
        if delay == 0.0:
            return True
        waiting = self._waiting
        if waiting is not None:
            deadline = trio.current_time() + delay
            if deadline < waiting.deadline:
                waiting.deadline = deadline
        return False

    async def stop(self) -> None:
        """Cancel what still runs on the loop, stop the driver, close the loop."""
        self._stopping = True
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()
        self._wake()
        await self._done.wait()
