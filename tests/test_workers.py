"""`farine._workers.WorkerPool`: the threads of `def` handlers, on both backends (the
same on either AMQP path: threads borrowed from anyio, once each)."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid

import anyio
import anyio.from_thread
import pytest

from farine import _workers
from farine._broker.loops import running_backend
from farine._workers import WorkerPool

pytestmark = pytest.mark.anyio

_var: contextvars.ContextVar[str] = contextvars.ContextVar("test_workers_var", default="unset")


def _unique(name: str) -> str:
    """A thread-name prefix no other test (nor the other backend's run) uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _pool_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{prefix}-")]


async def test_a_call_runs_in_another_thread_with_the_callers_context() -> None:
    pool = WorkerPool(2)
    _var.set("set by the caller")
    thread_id, value = await pool.run(lambda: (threading.get_ident(), _var.get()))
    assert thread_id != threading.get_ident()
    assert value == "set by the caller"


async def test_an_exception_reaches_the_caller_with_its_type() -> None:
    pool = WorkerPool(1)

    def fail(text: str) -> None:
        raise KeyError(text)

    with pytest.raises(KeyError, match="boom"):
        await pool.run(fail, "boom")
    assert await pool.run(len, "still works") == 11


async def test_a_thread_that_finishes_takes_the_next_call() -> None:
    name = _unique("pool-reuse")
    pool = WorkerPool(1, name=name)
    first = await pool.run(threading.get_ident)
    second = await pool.run(threading.get_ident)
    assert first == second
    assert pool.threads == 1


async def test_no_more_than_max_workers_calls_run_at_once_and_all_finish() -> None:
    name = _unique("pool-bound")
    pool = WorkerPool(3, name=name)
    lock = threading.Lock()
    running = peak = 0
    three_in = threading.Event()
    release = threading.Event()

    def work(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == 3:
                three_in.set()
        release.wait(10)
        with lock:
            running -= 1
        return n * 2

    results: dict[int, int] = {}

    async def call(n: int) -> None:
        results[n] = await pool.run(work, n)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(call, n)
            assert await anyio.to_thread.run_sync(three_in.wait, 10)
            await anyio.wait_all_tasks_blocked()
            assert pool.threads == 3  # the other 47 calls wait for these three
            release.set()
    assert results == {n: n * 2 for n in range(50)}
    assert peak == 3
    assert len(_pool_threads(name)) == 3  # named by the pool while they work for it


async def test_cancelling_the_caller_returns_at_once_and_drops_the_result() -> None:
    pool = WorkerPool(1)
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def blocking(name: str) -> str:
        ran.append(name)
        started.set()
        release.wait(10)
        return name

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, blocking, "running")
            assert await anyio.to_thread.run_sync(started.wait, 10)
            tg.start_soon(pool.run, blocking, "queued")
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()  # both callers return while "running" still runs
        release.set()
        # The queued call never starts: the next call is the next to run.
        assert await pool.run(lambda: "next") == "next"
    assert ran == ["running"]


async def test_anyio_from_thread_works_without_a_token() -> None:
    pool = WorkerPool(1)

    async def on_loop(value: int) -> int:
        await anyio.lowlevel.checkpoint()
        return value + 1

    def in_thread() -> tuple[int, int]:
        return (
            anyio.from_thread.run(on_loop, 1),
            anyio.from_thread.run_sync(lambda: 41 + 1),
        )

    with anyio.fail_after(10):
        assert await pool.run(in_thread) == (2, 42)
        # A later call in the same thread still knows its loop.
        assert await pool.run(in_thread) == (2, 42)


async def test_lowering_max_workers_lets_extra_threads_exit() -> None:
    name = _unique("pool-shrink")
    pool = WorkerPool(2, name=name)
    both_in = threading.Barrier(3)
    lowered = threading.Event()
    threads: list[threading.Thread] = []

    def meet() -> None:
        both_in.wait(10)
        lowered.wait(10)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, meet)
            tg.start_soon(pool.run, meet)
            await anyio.to_thread.run_sync(both_in.wait, 10)
            assert pool.threads == 2
            threads.extend(_pool_threads(name))
            pool.max_workers = 1  # while both threads are busy
            lowered.set()
        # The first thread to finish exits; the other one stays for the next calls.
        assert len(threads) == 2
        await anyio.to_thread.run_sync(_wait_for_leaves, name, 1, abandon_on_cancel=True)
    assert pool.threads == 1
    assert await pool.run(threading.current_thread) in threads
    with pytest.raises(ValueError, match="max_workers"):
        pool.max_workers = 0


async def test_lowering_max_workers_lets_extra_idle_threads_exit_at_once() -> None:
    name = _unique("pool-shrink-idle")
    pool = WorkerPool(3, name=name)
    all_in = threading.Barrier(4)

    def meet() -> None:
        all_in.wait(10)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(pool.run, meet)
            await anyio.to_thread.run_sync(all_in.wait, 10)
        threads = _pool_threads(name)
        assert len(threads) == 3
        pool.max_workers = 1  # all three are idle now (their idle timeout is 10 s)
        assert pool.threads == 1
        await anyio.to_thread.run_sync(_wait_for_leaves, name, 1, abandon_on_cancel=True)
        assert await pool.run(threading.current_thread) in threads
    assert len(_pool_threads(name)) == 1


def _wait_for_leaves(prefix: str, count: int) -> None:
    """Block until `count` threads work for the pool named `prefix` (10 s at most). A
    thread that leaves goes back to anyio, under its own name again; nothing tells
    when, so this looks every few milliseconds."""
    deadline = time.monotonic() + 10
    while len(_pool_threads(prefix)) > count:
        assert time.monotonic() < deadline, f"threads still working: {_pool_threads(prefix)}"
        time.sleep(0.005)


async def test_idle_threads_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_workers, "IDLE_TIMEOUT", 0.05)
    name = _unique("pool-idle")
    pool = WorkerPool(2, name=name)
    assert await pool.run(lambda: 1) == 1
    assert len(_pool_threads(name)) == 1
    with anyio.fail_after(10):
        await anyio.to_thread.run_sync(_wait_for_leaves, name, 0, abandon_on_cancel=True)
    assert pool.threads == 0
    assert await pool.run(lambda: 2) == 2  # a new thread starts for the next call
    assert pool.threads == 1


def test_a_pool_serves_one_loop_after_another_and_leaves_each() -> None:
    """Threads belong to the loop they were borrowed on: each loop gets its own, and
    they leave when their loop ends."""
    name = _unique("pool-loops")
    pool = WorkerPool(2, name=name)

    async def on_loop() -> str:
        return running_backend()

    async def use() -> str:
        return await pool.run(lambda: anyio.from_thread.run(on_loop))

    for backend in ("asyncio", "trio", "asyncio"):
        assert anyio.run(use, backend=backend) == backend
        _wait_for_leaves(name, 0)
    assert pool.threads == 0
