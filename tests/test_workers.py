"""`farine._workers.WorkerPool`: the threads of `def` handlers, on both backends, with
the fast path on (the pool's own threads) and off (`anyio.to_thread`)."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import uuid

import anyio
import anyio.from_thread
import pytest

from farine import _workers
from farine._broker.aiormq import fastpath
from farine._broker.aiormq.fastpath import ENV_VAR as FAST_PATH_ENV_VAR
from farine._workers import WorkerPool

pytestmark = pytest.mark.anyio

#: Tests of the pool's own threads (the fast path's way).
own_threads = pytest.mark.fastpath


@pytest.fixture(params=["on", "off"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The pool's `fast_path` setting; the environment variable would override it."""
    monkeypatch.delenv(FAST_PATH_ENV_VAR, raising=False)
    return str(request.param)


_var: contextvars.ContextVar[str] = contextvars.ContextVar("test_workers_var", default="unset")


def _unique(name: str) -> str:
    """A thread-name prefix no other test (nor the other backend's run) uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _pool_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{prefix}-")]


async def test_a_call_runs_in_another_thread_with_the_callers_context(fast_path: str) -> None:
    pool = WorkerPool(2, fast_path=fast_path)
    _var.set("set by the caller")
    thread_id, value = await pool.run(lambda: (threading.get_ident(), _var.get()))
    assert thread_id != threading.get_ident()
    assert value == "set by the caller"


async def test_an_exception_reaches_the_caller_with_its_type(fast_path: str) -> None:
    pool = WorkerPool(1, fast_path=fast_path)

    def fail(text: str) -> None:
        raise KeyError(text)

    with pytest.raises(KeyError, match="boom"):
        await pool.run(fail, "boom")
    assert await pool.run(len, "still works") == 11


@own_threads
async def test_a_thread_that_finishes_takes_the_next_call() -> None:
    name = _unique("pool-reuse")
    pool = WorkerPool(1, name=name)
    first = await pool.run(threading.get_ident)
    second = await pool.run(threading.get_ident)
    assert first == second
    assert pool.threads == 1


async def test_no_more_than_max_workers_calls_run_at_once_and_all_finish(fast_path: str) -> None:
    name = _unique("pool-bound")
    pool = WorkerPool(3, name=name, fast_path=fast_path)
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
    if fast_path == "on":
        assert len(_pool_threads(name)) == 3  # the pool's own threads, by name


async def test_cancelling_the_caller_returns_at_once_and_drops_the_result(fast_path: str) -> None:
    pool = WorkerPool(1, fast_path=fast_path)
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


async def test_anyio_from_thread_works_without_a_token(fast_path: str) -> None:
    pool = WorkerPool(1, fast_path=fast_path)

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


@own_threads
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
        await anyio.to_thread.run_sync(_wait_for_exits, threads, 1, abandon_on_cancel=True)
    assert pool.threads == 1
    assert await pool.run(threading.current_thread) in threads
    with pytest.raises(ValueError, match="max_workers"):
        pool.max_workers = 0


@own_threads
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
        await anyio.to_thread.run_sync(_wait_for_exits, threads, 2, abandon_on_cancel=True)
        assert await pool.run(threading.current_thread) in threads
    assert len(_pool_threads(name)) == 1


def _wait_for_exits(threads: list[threading.Thread], count: int) -> None:
    """Block until `count` of `threads` have ended (each is joined in turn, briefly)."""
    while sum(not thread.is_alive() for thread in threads) < count:
        for thread in threads:
            thread.join(0.01)


@own_threads
async def test_idle_threads_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_workers, "IDLE_TIMEOUT", 0.05)
    name = _unique("pool-idle")
    pool = WorkerPool(2, name=name)
    assert await pool.run(lambda: 1) == 1
    threads = _pool_threads(name)
    assert len(threads) == 1
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join, 10)
    assert pool.threads == 0
    assert await pool.run(lambda: 2) == 2  # a new thread starts for the next call
    assert pool.threads == 1


async def test_without_the_thread_marks_calls_go_through_anyio_threads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An anyio or trio that moved what the fast path reads: `def` handlers still run."""
    monkeypatch.delenv(FAST_PATH_ENV_VAR, raising=False)
    monkeypatch.delitem(sys.modules, "farine._broker.aiormq.fastpath.threads", raising=False)
    monkeypatch.setitem(sys.modules, "farine._broker.aiormq.fastpath.threads", None)
    monkeypatch.delattr(fastpath, "threads", raising=False)
    caplog.set_level(logging.INFO, logger="farine.runtime")
    pool = WorkerPool(1, name=_unique("pool-no-marks"), fast_path="on")

    async def on_loop() -> str:
        return "on the loop"

    with anyio.fail_after(10):
        assert await pool.run(lambda: anyio.from_thread.run(on_loop)) == "on the loop"
    assert _pool_threads("pool-no-marks") == []
    assert any("calls go through anyio.to_thread" in r.getMessage() for r in caplog.records)
