"""Where the engine runs: the service's asyncio loop, a loop driven by its trio run, or a
loop in a thread of its own."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio
import trio

from farine._broker.errors import PublishError
from farine._broker.loops import (
    LoopHandle,
    Reply,
    defer_wakes_on,
    stop_deferring_wakes,
    wait_future,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

logger = logging.getLogger("farine.amqp")

T = TypeVar("T")


def run_blocking_on(
    loop: asyncio.AbstractEventLoop,
    loop_thread: int,
    coro: Coroutine[Any, Any, T],
    timeout: float | None,
) -> T:
    """Run `coro` on `loop`, which runs in the service's thread, from another thread.

    Raises:
        RuntimeError: Called from the loop's own thread (it would wait for itself).
    """
    if threading.get_ident() == loop_thread:
        coro.close()
        raise RuntimeError(
            "a blocking publish was called on the event loop thread; "
            "in async code use `await publish(...)`"
        )
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


class ServiceLoopHost:
    """The asyncio backend: the engine runs on the service's own loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread_id = threading.get_ident()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await coro

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return run_blocking_on(self.loop, self.thread_id, coro, timeout)

    async def stop(self) -> None:
        await anyio.lowlevel.checkpoint()


class ThreadHost:
    """Plain scripts, blocking code: the engine runs on its own loop in a thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=f"farine-amqp-{name}", daemon=True)
        self._thread.start()
        self.thread_id = self._thread.ident or 0
        self.inbox = LoopHandle.of_asyncio_loop(self.loop, self.thread_id)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        defer_wakes_on(self.loop)
        try:
            self.loop.run_forever()
        finally:
            stop_deferring_wakes()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not trio.lowlevel.in_trio_task():
            # An asyncio caller (a script's own loop, no runtime): the plain way.
            return await wait_future(asyncio.run_coroutine_threadsafe(coro, self.loop))
        # From trio, the call crosses through the loops' handles instead: one wake-up of
        # each side per burst (not a self-pipe write per call plus a trio token call per
        # result), and no concurrent.futures.Future to chain.
        reply: Reply[T] = Reply()  # not Reply[T](): see farine._workers
        call = CrossCall(coro, reply)
        if not self.inbox.call_soon(call.start):
            coro.close()
            raise PublishError("the AMQP connection's thread has stopped")
        return await call.reply.wait(functools.partial(self.inbox.call_soon, call.cancel))

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if threading.get_ident() == self.thread_id:
            coro.close()
            raise RuntimeError("a blocking publish was called on the AMQP engine's thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop_blocking(self) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.stop_blocking)


class Host(Protocol):
    """Where the engine runs: `ServiceLoopHost`, `ThreadHost`, or a trio driver
    (`SteppedDriver`, or the fast path's `TrioDriver`)."""

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the engine loop for the calling task; return its result."""
        ...

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run `coro` on the engine loop from a thread that runs no event loop."""
        ...

    async def stop(self) -> None:
        """Stop running the engine loop."""
        ...


class CrossCall(Generic[T]):
    """A coroutine run on the engine loop for a trio task (see `ThreadHost.run`)."""

    __slots__ = ("coro", "reply", "task")

    def __init__(self, coro: Coroutine[Any, Any, T], reply: Reply[T]) -> None:
        self.coro = coro
        self.reply = reply
        self.task: asyncio.Task[T] | None = None

    def start(self) -> None:
        """Start the coroutine (on the engine loop)."""
        self.task = asyncio.get_running_loop().create_task(self.coro)
        self.task.add_done_callback(self._finish)

    def cancel(self) -> None:
        """Cancel it (on the engine loop; `start` ran before: same queue, in order)."""
        if self.task is not None:
            self.task.cancel()

    def _finish(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            # Cancelled for the caller (who no longer waits), or by the loop stopping.
            self.reply.throw(PublishError("the AMQP connection is closed"))
            return
        exc = task.exception()
        if exc is not None:
            self.reply.throw(exc)
        else:
            self.reply.send(task.result())


class TrioHost(Host, Protocol):
    """A `Host` for the trio backend: the engine loop runs in trio's thread, driven by a
    task of the trio run (`drive()`)."""

    async def drive(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the engine loop until `stop()`; started with `nursery.start()`."""
        ...
