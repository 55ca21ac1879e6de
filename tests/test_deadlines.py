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
    start = early = anyio.current_time()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(deadlines.run)
            deadlines.add("late", start + 1)  # the task sleeps until 1 s...
            await anyio.wait_all_tasks_blocked()
            # ...and is woken for an earlier one (counted from now: a loaded machine may
            # have taken a while to get here).
            early = anyio.current_time() + 0.05
            deadlines.add("early", early)
            deadlines.add("same", early)
            deadlines.add("discarded", early)
            deadlines.discard("discarded")
            await all_done.wait()
            tg.cancel_scope.cancel()
    names = [name for name, _ in expired]
    assert sorted(names[:2]) == ["early", "same"]
    assert names[2] == "late"
    when = dict(expired)
    assert when["early"] >= early
    assert when["late"] >= start + 1
    assert when["early"] < start + 1  # not held back until the later deadline


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
