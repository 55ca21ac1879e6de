"""`farine._deadlines.Deadlines`: many deadlines kept by one task, on both backends."""

from __future__ import annotations

import anyio
import pytest

from farine._deadlines import Deadlines

pytestmark = pytest.mark.anyio


async def test_items_expire_once_their_deadline_passed_and_not_before() -> None:
    expired: list[tuple[str, float]] = []
    all_done = anyio.Event()

    def on_expired(name: str) -> None:
        expired.append((name, anyio.current_time()))
        if len(expired) == 3:
            all_done.set()

    deadlines = Deadlines[str](on_expired)
    start = anyio.current_time()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(deadlines.run)
            deadlines.add("late", start + 0.3)  # the task sleeps until 0.3 s...
            await anyio.wait_all_tasks_blocked()
            deadlines.add("early", start + 0.05)  # ...and is woken for an earlier one
            deadlines.add("same", start + 0.05)
            deadlines.add("discarded", start + 0.05)
            deadlines.discard("discarded")
            await all_done.wait()
            tg.cancel_scope.cancel()
    names = [name for name, _ in expired]
    assert sorted(names[:2]) == ["early", "same"]
    assert names[2] == "late"
    when = dict(expired)
    assert when["early"] >= start + 0.05
    assert when["late"] >= start + 0.3
    assert when["early"] < start + 0.3  # not held back until the later deadline


async def test_an_item_discarded_in_time_never_expires() -> None:
    expired: list[str] = []
    marker_expired = anyio.Event()

    def on_expired(name: str) -> None:
        expired.append(name)
        if name == "marker":
            marker_expired.set()

    deadlines = Deadlines[str](on_expired)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(deadlines.run)
            deadlines.add("call", anyio.current_time() + 0.05)
            deadlines.discard("call")  # the call ended first
            deadlines.add("marker", anyio.current_time() + 0.1)  # after the call's
            await marker_expired.wait()
            tg.cancel_scope.cancel()
    assert expired == ["marker"]
