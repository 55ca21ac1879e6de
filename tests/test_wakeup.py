"""`farine._broker.loops.Wakeup` (one task woken by code on its loop) and `now()`, both backends."""

from __future__ import annotations

import anyio
import pytest

from farine._broker.loops import Wakeup, now

pytestmark = pytest.mark.anyio


async def test_a_waiting_task_is_woken_by_set() -> None:
    wakeup = Wakeup()
    woken: list[bool] = []

    async def waiter() -> None:
        await wakeup.wait()
        woken.append(wakeup.is_set())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert woken == []  # still parked
            wakeup.set()
            wakeup.set()  # a second set changes nothing
    assert woken == [True]


async def test_a_wait_after_set_returns_at_once() -> None:
    wakeup = Wakeup()
    assert not wakeup.is_set()
    wakeup.set()
    with anyio.fail_after(5):
        await wakeup.wait()
    assert wakeup.is_set()


async def test_a_cancelled_wait_can_still_be_set() -> None:
    wakeup = Wakeup()
    with anyio.move_on_after(0.01) as scope:
        await wakeup.wait()
    assert scope.cancelled_caught
    assert not wakeup.is_set()
    wakeup.set()  # nobody waits any more: no error, and the flag tells
    assert wakeup.is_set()


async def test_now_reads_the_clock_of_anyio_current_time() -> None:
    before = anyio.current_time()
    await anyio.sleep(0.01)
    during = now()
    after = anyio.current_time()
    # asyncio may run a timer up to its clock resolution early: hence 0.009.
    assert before + 0.009 <= during <= after
