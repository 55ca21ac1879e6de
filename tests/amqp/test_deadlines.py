"""Publish deadlines on the engine loop: one timer for all the publishes in flight.

The engine's loop is the service's own on asyncio and a loop driven by trio on trio:
each scenario runs on it, on both backends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from farine._broker.aiormq.deadlines import PublishDeadlines
from tests.amqp._engine_loop import on_engine_loop

pytestmark = pytest.mark.anyio


async def wait_watched(
    deadlines: PublishDeadlines, delay: float, sleep: float, watches: list[Any] | None = None
) -> str:
    """Sleep `sleep` seconds under a deadline `delay` seconds away; tell how it ended.

    The watch is appended to `watches`, when given.
    """
    loop = asyncio.get_running_loop()
    watch = deadlines.watch(loop.time() + delay)
    if watches is not None:
        watches.append(watch)
    try:
        try:
            await asyncio.sleep(sleep)
        finally:
            deadlines.forget(watch)
    except asyncio.CancelledError:
        if watch.timed_out():
            return "timed out"
        raise
    return "done"


async def test_a_publish_past_its_deadline_times_out_and_its_task_goes_on() -> None:
    async def scenario() -> tuple[str, str, int]:
        loop = asyncio.get_running_loop()
        deadlines = PublishDeadlines(loop)
        first = await wait_watched(deadlines, 0.02, 10)
        task = asyncio.current_task()
        assert task is not None
        # The cancellation was absorbed: the task is not cancelled any more and can wait.
        second = await wait_watched(deadlines, 10, 0.01)
        deadlines.close()
        return first, second, task.cancelling()

    with anyio.fail_after(5):
        assert await on_engine_loop(scenario()) == ("timed out", "done", 0)


async def test_an_earlier_deadline_moves_the_timer_and_each_fires_on_its_own() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = PublishDeadlines(loop)
        ended: list[str] = []

        async def one(name: str, delay: float, sleep: float) -> None:
            ended.append(f"{name}: {await wait_watched(deadlines, delay, sleep)}")

        started = loop.time()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(one("late", 0.3, 10))  # arms the timer for 0.3 s
            tg.create_task(one("early", 0.05, 10))  # must move it earlier
            tg.create_task(one("quick", 0.05, 0))  # ends before its deadline
            tg.create_task(one("same", 0.05, 10))  # same deadline as early
        assert loop.time() - started < 5
        deadlines.close()
        return ended

    with anyio.fail_after(5):
        ended = await on_engine_loop(scenario())
    assert ended[0] == "quick: done"
    assert sorted(ended[1:3]) == ["early: timed out", "same: timed out"]
    assert ended[3] == "late: timed out"


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        deadlines = PublishDeadlines(loop)
        alone = loop.create_task(wait_watched(deadlines, 10, 10))
        await asyncio.sleep(0)
        alone.cancel()  # long before its deadline
        await asyncio.wait([alone])

        # Both at once: the deadline fires, and the task is cancelled again before it
        # resumes (a loop runs callbacks in order: this task's next step comes first).
        watches: list[Any] = []
        both = loop.create_task(wait_watched(deadlines, 0.02, 10, watches))
        await asyncio.sleep(0)
        # One loop iteration at a time, so as to cancel between the deadline and the
        # task's next step: an event would not come back in the same iteration.
        while not watches[0].fired:  # noqa: ASYNC110
            await asyncio.sleep(0)
        both.cancel()
        await asyncio.wait([both])
        deadlines.close()
        return alone.cancelled(), both.cancelled()

    with anyio.fail_after(5):
        assert await on_engine_loop(scenario()) == (True, True)


async def test_a_forgotten_deadline_cancels_nothing() -> None:
    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        deadlines = PublishDeadlines(loop)
        watch = deadlines.watch(loop.time() + 0.02)
        deadlines.forget(watch)
        await asyncio.sleep(0.1)  # past the deadline: the timer fires and finds nothing
        deadlines.close()
        return "fired" if watch.fired else "not fired"

    with anyio.fail_after(5):
        assert await on_engine_loop(scenario()) == "not fired"
