"""The worker threads that run a service's `def` handlers.

Each service has one `WorkerPool`, running at most `max_workers` calls at once. Its
threads are borrowed from the running backend with `anyio.to_thread.run_sync()`, once
per thread and not once per call: a call waits in the pool's queue until a thread is
free; a thread that finishes a call takes the next one at once, and sleeps only when
there is none (it goes back to anyio after `IDLE_TIMEOUT` seconds without work, or when
its loop ends). Results go back to the caller's loop through its `LoopHandle`, with the
other crossings of the same burst. The threads being anyio's, code in them may use
`anyio.from_thread.run()` without a token. docs/design.md says why the pool keeps its
threads between calls.
"""

from __future__ import annotations

import contextvars
import logging
import math
import queue
import threading
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import anyio.to_thread

from farine._broker.loops import LoopHandle, Reply, spawn

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("IDLE_TIMEOUT", "WorkerPool")

logger = logging.getLogger("farine.runtime")

R = TypeVar("R")

#: Seconds an idle worker thread waits for work before it goes back to anyio.
IDLE_TIMEOUT: Final = 10.0


class _Job(Generic[R]):
    """One call waiting for, or running in, a worker thread."""

    __slots__ = ("args", "cancelled", "context", "func", "reply")

    def __init__(self, func: Callable[..., R], args: tuple[Any, ...], reply: Reply[R]) -> None:
        self.func = func
        self.args = args
        self.reply = reply
        self.context = contextvars.copy_context()
        self.cancelled = False

    def cancel(self) -> None:
        # Read by the worker thread before it starts the call (a plain attribute read);
        # a call already running finishes, and its result is dropped.
        self.cancelled = True

    def run(self) -> None:
        if self.cancelled:
            return
        try:
            result = self.context.run(self.func, *self.args)
        except BaseException as exc:  # all of it goes to the caller
            self.reply.throw(exc)
        else:
            self.reply.send(result)


#: Queued by `_Crew.let_idle_leave()` (a lower `max_workers`, a retired crew): an idle
#: thread that takes it leaves.
_LEAVE: Final[Any] = object()


class _Crew:
    """The threads of one event loop, and the calls waiting for them.

    A thread borrowed from anyio belongs to the loop it was borrowed on (anyio's
    `from_thread` calls in it reach that loop), so the pool has one crew per loop; a
    call from another loop retires the crew, whose threads leave once its queue is
    empty. Counts are guarded by the pool's lock.
    """

    __slots__ = ("backlog", "home", "idle", "jobs", "limiter", "retired", "threads")

    def __init__(self, home: LoopHandle) -> None:
        self.home = home
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads = 0
        self.idle = 0  # threads waiting for a job, none promised to them yet
        self.backlog = 0  # jobs queued with no thread promised to them yet
        self.retired = False
        #: Made on the crew's loop by the first borrow: the pool bounds the threads.
        self.limiter: anyio.CapacityLimiter | None = None

    def let_idle_leave(self, count: int) -> None:
        """Send `count` idle threads away (counted out by the caller, under the lock)."""
        for _ in range(count):
            self.jobs.put(_LEAVE)


class WorkerPool:
    """Runs blocking calls in worker threads, at most `max_workers` at once.

    Args:
        max_workers: Most threads (so calls) running at once; more calls wait, in order.
        name: Prefix of the threads' names while they work for the pool.

    Raises:
        ValueError: `max_workers` is below 1.

    Example:
        ```python
        pool = WorkerPool(4, name="farine-orders")
        rows = await pool.run(fetch_rows, "SELECT 1")
        ```
    """

    def __init__(self, max_workers: int, *, name: str = "farine-worker") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._max = max_workers
        self._name = name
        self._lock = threading.Lock()
        self._crew: _Crew | None = None  # the threads of the loop the last call came from
        self._started = 0  # threads ever borrowed (for their names)

    @property
    def max_workers(self) -> int:
        """Most calls running at once. Lowering it makes extra idle threads leave at once,
        and extra busy ones as they finish their call."""
        return self._max

    @max_workers.setter
    def max_workers(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_workers must be >= 1")
        leaving = 0
        with self._lock:
            self._max = value
            crew = self._crew
            if crew is not None:
                # Idle threads beyond the new bound leave now (busy ones as they finish).
                leaving = max(0, min(crew.idle, crew.threads - value))
                crew.idle -= leaving
                crew.threads -= leaving
        if crew is not None:
            crew.let_idle_leave(leaving)

    @property
    def threads(self) -> int:
        """Worker threads working for the pool now (busy or idle)."""
        crew = self._crew
        return 0 if crew is None else crew.threads

    @property
    def busy(self) -> int:
        """Worker threads running a call now."""
        crew = self._crew
        return 0 if crew is None else max(0, crew.threads - crew.idle)

    async def run(self, func: Callable[..., R], /, *args: Any) -> R:
        """Run `func(*args)` in a worker thread and return (or raise) what it does.

        The call runs in a copy of the caller's context (context variables). When the
        waiting task is cancelled, it returns at once: a call not started yet never
        starts, one already running finishes in its thread, and its result is dropped.
        """
        reply: Reply[R] = Reply()  # not Reply[R](): that sets __orig_class__, refused by __slots__
        crew = self._crew
        if crew is None or crew.home is not reply.home:
            crew = self._crew_for(reply.home)
        job = _Job(func, args, reply)
        self._submit(crew, job)
        return await reply.wait(job.cancel)

    def _crew_for(self, home: LoopHandle) -> _Crew:
        """A new crew for the loop of `home`; the previous one's threads leave."""
        with self._lock:
            old, crew = self._crew, _Crew(home)
            self._crew = crew
        if old is not None:
            self._retire(old)
        return crew

    def _retire(self, crew: _Crew) -> None:
        """Let `crew`'s idle threads leave now, and its busy ones once its queue is empty."""
        with self._lock:
            if crew.retired:
                return
            crew.retired = True
            leaving = crew.idle
            crew.idle = 0
            crew.threads -= leaving
        crew.let_idle_leave(leaving)

    def _submit(self, crew: _Crew, job: _Job[Any]) -> None:
        borrow = False
        with self._lock:
            if crew.idle:
                crew.idle -= 1
            elif crew.threads < self._max:
                crew.threads += 1
                self._started += 1
                borrow = True
            else:
                crew.backlog += 1
            number = self._started
        crew.jobs.put(job)
        if borrow:
            self._borrow(crew, f"{self._name}-{number}")

    def _borrow(self, crew: _Crew, name: str) -> None:
        """Borrow a thread from anyio, in a task of the crew's loop, to take its jobs."""

        async def host() -> None:
            if crew.limiter is None:
                crew.limiter = anyio.CapacityLimiter(math.inf)
            finished = False
            try:
                await anyio.to_thread.run_sync(
                    self._work, crew, name, limiter=crew.limiter, abandon_on_cancel=True
                )
                finished = True
            except Exception:  # a bug of the pool's: logged, not the run's end
                logger.exception("worker thread %s failed", name)
            finally:
                if not finished:  # cancelled (the loop is ending), or the bug above
                    self._retire(crew)

        spawn(host)

    def _work(self, crew: _Crew, name: str) -> None:
        """Take `crew`'s jobs in this (borrowed) thread until it must leave."""
        thread = threading.current_thread()
        borrowed_name = thread.name
        thread.name = name
        try:
            self._take_jobs(crew)
        finally:
            thread.name = borrowed_name

    def _take_jobs(self, crew: _Crew) -> None:
        jobs = crew.jobs
        lock = self._lock
        while True:
            try:
                job = jobs.get(timeout=IDLE_TIMEOUT)
            except queue.Empty:
                with lock:
                    if crew.idle:  # else a job (or a leave) was just promised to this thread
                        crew.idle -= 1
                        crew.threads -= 1
                        return
                continue
            if job is _LEAVE:
                return  # counted out by whoever queued it
            job.run()
            del job  # its result and traceback are the caller's now
            with lock:
                if crew.threads > self._max:
                    crew.threads -= 1
                    return
                if crew.backlog:
                    crew.backlog -= 1
                    continue  # a job is queued for this thread
                if crew.retired:
                    crew.threads -= 1
                    return
                crew.idle += 1
