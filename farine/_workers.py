"""The worker threads that run a service's `def` handlers.

Each service has one `WorkerPool`, holding at most `max_workers` threads. A call waits
in the pool's queue until a thread is free; a thread that finishes a call takes the
next one at once, and sleeps only when there is none (it exits after `IDLE_TIMEOUT`
seconds without work). Results go back to the caller's loop through its `LoopHandle`,
with the other crossings of the same burst.

`anyio.to_thread.run_sync` did the same work, at a cost measured per call: two rounds
of the event loop before the call reached its thread (a checkpoint, then the capacity
limiter's), and one wake-up of the loop per result. With many calls in flight (an RPC
server), the pool wakes the loop once per burst of results and its threads do not park
between calls.

Code in a worker thread may still use `anyio.from_thread.run()` without a token: each
call records its loop where anyio's (and on trio, trio's) own worker threads do.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio.lowlevel

from farine._loop import LoopHandle, Reply

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("IDLE_TIMEOUT", "WorkerPool")

R = TypeVar("R")

#: Seconds an idle worker thread waits for work before it exits.
IDLE_TIMEOUT: Final = 10.0

# Where anyio and trio record the loop of their worker threads, for `from_thread.run()`
# without a token (both private; if they move, such calls in `def` handlers need
# `token=`, and everything else works).
try:
    from anyio._core._eventloop import threadlocals as _anyio_threadlocals
except ImportError:  # pragma: no cover - a future anyio
    _anyio_threadlocals = None
try:
    from trio._threads import PARENT_TASK_DATA as _trio_threadlocals  # noqa: TID251
except ImportError:  # pragma: no cover - a future trio
    _trio_threadlocals = None


def _claim(token: anyio.lowlevel.EventLoopToken, trio_token: Any) -> None:
    """Record the calling loop in this worker thread, as anyio's worker threads do."""
    if _anyio_threadlocals is not None:
        _anyio_threadlocals.current_token = token
    if trio_token is not None and _trio_threadlocals is not None:
        # As trio's threads started with abandon_on_cancel: calls made from here run
        # in trio's system nursery, not in the (unrelated) task that waits.
        _trio_threadlocals.token = trio_token
        _trio_threadlocals.abandon_on_cancel = True


def _release(trio_token: Any) -> None:
    if _anyio_threadlocals is not None:
        del _anyio_threadlocals.current_token
    if trio_token is not None and _trio_threadlocals is not None:
        del _trio_threadlocals.token
        del _trio_threadlocals.abandon_on_cancel


class _Job(Generic[R]):
    """One call waiting for, or running in, a worker thread."""

    __slots__ = ("args", "cancelled", "context", "func", "reply", "token", "trio_token")

    def __init__(
        self,
        func: Callable[..., R],
        args: tuple[Any, ...],
        reply: Reply[R],
        token: anyio.lowlevel.EventLoopToken,
    ) -> None:
        self.func = func
        self.args = args
        self.reply = reply
        self.token = token
        self.trio_token: Any = None if reply.home.is_asyncio else token.native_token
        self.context = contextvars.copy_context()
        self.cancelled = False

    def cancel(self) -> None:
        # Read by the worker thread before it starts the call (a plain attribute read);
        # a call already running finishes, and its result is dropped.
        self.cancelled = True

    def run(self) -> None:
        if self.cancelled:
            return
        _claim(self.token, self.trio_token)
        try:
            result = self.context.run(self.func, *self.args)
        except BaseException as exc:  # all of it goes to the caller
            self.reply.throw(exc)
        else:
            self.reply.send(result)
        finally:
            _release(self.trio_token)


#: Queued by the `max_workers` setter: an idle thread that takes it exits.
_LEAVE: Final[Any] = object()


class WorkerPool:
    """Runs blocking calls in worker threads, at most `max_workers` at once.

    Args:
        max_workers: Most threads (so calls) running at once; more calls wait, in order.
        name: Prefix of the threads' names.
    """

    def __init__(self, max_workers: int, *, name: str = "farine-worker") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._max = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a job, none promised to them yet
        self._backlog = 0  # jobs queued with no thread promised to them yet
        self._started = 0  # threads ever started (for their names)
        # The anyio token of the loop the last call came from (one loop, almost always).
        self._home: LoopHandle | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None

    @property
    def max_workers(self) -> int:
        """Most calls running at once. Lowering it makes extra idle threads exit at once,
        and extra busy ones as they finish their call."""
        return self._max

    @max_workers.setter
    def max_workers(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_workers must be >= 1")
        with self._lock:
            self._max = value
            # Idle threads beyond the new bound leave now (busy ones as they finish).
            leaving = min(self._idle, self._threads - value)
            if leaving > 0:
                self._idle -= leaving
                self._threads -= leaving
        for _ in range(leaving):
            self._jobs.put(_LEAVE)

    @property
    def threads(self) -> int:
        """Worker threads alive now (busy or idle)."""
        return self._threads

    async def run(self, func: Callable[..., R], /, *args: Any) -> R:
        """Run `func(*args)` in a worker thread and return (or raise) what it does.

        The call runs in a copy of the caller's context (context variables). When the
        waiting task is cancelled, it returns at once: a call not started yet never
        starts, one already running finishes in its thread, and its result is dropped.
        """
        reply = Reply[R]()
        home = reply.home
        if home is not self._home or self._token is None:
            self._token = anyio.lowlevel.current_token()
            self._home = home
        job = _Job(func, args, reply, self._token)
        self._submit(job)
        return await reply.wait(job.cancel)

    def _submit(self, job: _Job[Any]) -> None:
        start = False
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._threads < self._max:
                self._threads += 1
                self._started += 1
                start = True
            else:
                self._backlog += 1
            number = self._started
        self._jobs.put(job)
        if start:
            thread = threading.Thread(target=self._work, name=f"{self._name}-{number}", daemon=True)
            thread.start()

    def _work(self) -> None:
        jobs = self._jobs
        lock = self._lock
        while True:
            try:
                job = jobs.get(timeout=IDLE_TIMEOUT)
            except queue.Empty:
                with lock:
                    if self._idle:  # else a job (or a leave) was just promised to this thread
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            if job is _LEAVE:
                return  # counted out by the `max_workers` setter
            job.run()
            del job  # its result and traceback are the caller's now
            with lock:
                if self._threads > self._max:
                    self._threads -= 1
                    return
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1
