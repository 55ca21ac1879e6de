"""The worker threads that run a service's `def` handlers.

Each service has one `WorkerPool`, running at most `max_workers` calls at once. With the
AMQP fast path on (`amqp_fast_path`), the pool holds its own threads: a call waits in
the pool's queue until a thread is free; a thread that finishes a call takes the next
one at once, and sleeps only when there is none (it exits after `IDLE_TIMEOUT` seconds
without work). Results go back to the caller's loop through its `LoopHandle`, with the
other crossings of the same burst; code in those threads may use
`anyio.from_thread.run()` without a token, as in anyio's own worker threads (recorded
by `farine._broker.aiormq.fastpath.threads`). With the fast path off, calls go through
`anyio.to_thread.run_sync()`, bounded by a capacity limiter. docs/design.md says why
the pool has threads of its own.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias, TypeVar, cast

import anyio
import anyio.lowlevel
import anyio.to_thread

from farine._broker.aiormq.fastpath import decide
from farine._broker.loops import LoopHandle, Reply

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("IDLE_TIMEOUT", "WorkerPool")

logger = logging.getLogger("farine.runtime")

R = TypeVar("R")

_Claim: TypeAlias = "Callable[[anyio.lowlevel.EventLoopToken, Any], None]"
_Release: TypeAlias = "Callable[[Any], None]"

#: Seconds an idle worker thread waits for work before it exits.
IDLE_TIMEOUT: Final = 10.0


def _thread_marks(fast_path: str) -> tuple[_Claim, _Release] | None:
    """How the pool's own threads record their caller's loop (the fast path's way);
    None when the fast path is off: calls then go through `anyio.to_thread`."""
    if not decide(fast_path).enabled:
        return None
    try:
        from farine._broker.aiormq.fastpath import threads
    except ImportError as exc:  # an anyio or trio that moved what it reads
        logger.info("worker threads: %s; calls go through anyio.to_thread", exc)
        return None
    return threads.claim, threads.release


class _Job(Generic[R]):
    """One call waiting for, or running in, a worker thread."""

    __slots__ = (
        "args",
        "cancelled",
        "claim",
        "context",
        "func",
        "release",
        "reply",
        "token",
        "trio_token",
    )

    def __init__(
        self,
        func: Callable[..., R],
        args: tuple[Any, ...],
        reply: Reply[R],
        token: anyio.lowlevel.EventLoopToken,
        marks: tuple[_Claim, _Release],
    ) -> None:
        self.func = func
        self.claim, self.release = marks
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
        self.claim(self.token, self.trio_token)
        try:
            result = self.context.run(self.func, *self.args)
        except BaseException as exc:  # all of it goes to the caller
            self.reply.throw(exc)
        else:
            self.reply.send(result)
        finally:
            self.release(self.trio_token)


#: Queued by the `max_workers` setter: an idle thread that takes it exits.
_LEAVE: Final[Any] = object()


class WorkerPool:
    """Runs blocking calls in worker threads, at most `max_workers` at once.

    Args:
        max_workers: Most threads (so calls) running at once; more calls wait, in order.
        name: Prefix of the threads' names.
        fast_path: The `amqp_fast_path` setting: with the fast path on, code in the
            threads may call `anyio.from_thread.run()` without a token.

    Raises:
        ValueError: `max_workers` is below 1, or `fast_path` is not auto, on or off.
    """

    def __init__(
        self, max_workers: int, *, name: str = "farine-worker", fast_path: str = "auto"
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._marks = _thread_marks(fast_path)
        # With the fast path off: the limiter of `anyio.to_thread` calls (per loop).
        self._limiter: anyio.CapacityLimiter | None = None
        self._limiter_loop: object = None
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
        if self._limiter is not None:
            self._limiter.total_tokens = value
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
        """Worker threads alive now (busy or idle); with the fast path off, busy ones."""
        if self._limiter is not None:
            return int(self._limiter.borrowed_tokens)
        return self._threads

    @property
    def busy(self) -> int:
        """Worker threads running a call now."""
        if self._limiter is not None:
            return int(self._limiter.borrowed_tokens)
        return max(0, self._threads - self._idle)

    async def run(self, func: Callable[..., R], /, *args: Any) -> R:
        """Run `func(*args)` in a worker thread and return (or raise) what it does.

        The call runs in a copy of the caller's context (context variables). When the
        waiting task is cancelled, it returns at once: a call not started yet never
        starts, one already running finishes in its thread, and its result is dropped.
        """
        marks = self._marks
        if marks is None:
            return await self._run_in_anyio_thread(func, *args)
        reply = Reply[R]()
        home = reply.home
        if home is not self._home or self._token is None:
            self._token = anyio.lowlevel.current_token()
            self._home = home
        job = _Job(func, args, reply, self._token, marks)
        self._submit(job)
        return await reply.wait(job.cancel)

    async def _run_in_anyio_thread(self, func: Callable[..., R], /, *args: Any) -> R:
        """`run()` through `anyio.to_thread`, bounded by a limiter of `max_workers`."""
        loop = anyio.lowlevel.current_token().native_token
        if self._limiter is None or loop is not self._limiter_loop:
            # A limiter belongs to one event loop.
            self._limiter = anyio.CapacityLimiter(self._max)
            self._limiter_loop = loop
        context = contextvars.copy_context()
        call = cast("Callable[[], R]", functools.partial(context.run, func, *args))
        return await anyio.to_thread.run_sync(call, limiter=self._limiter, abandon_on_cancel=True)

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
