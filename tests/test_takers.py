"""`farine._takers.Takers`: as many tasks as messages being handled, on both backends."""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING

import anyio
import pytest

from farine._takers import Takers

if TYPE_CHECKING:
    from collections.abc import Generator

pytestmark = pytest.mark.anyio

_task_var: contextvars.ContextVar[str] = contextvars.ContextVar("takers_scope", default="unset")


async def test_an_idle_consumer_holds_one_task() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    takers = Takers(receive, lambda _: anyio.lowlevel.checkpoint(), limit=64)
    with send, receive, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(takers.run)
            await anyio.wait_all_tasks_blocked()
            assert takers.tasks == 1
            send.close()
    assert takers.tasks == 0


async def test_busy_messages_get_a_task_each_up_to_the_limit_and_they_stay() -> None:
    send, receive = anyio.create_memory_object_stream[int](100)
    release = anyio.Event()
    started: list[int] = []
    done: list[int] = []

    async def handle(n: int) -> None:
        started.append(n)
        await release.wait()
        done.append(n)

    takers = Takers(receive, handle, limit=5)
    with send, receive, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(takers.run)
            for n in range(8):
                await send.send(n)
            await anyio.wait_all_tasks_blocked()
            assert takers.tasks == 5  # five handling, none waiting: the limit
            assert started == [0, 1, 2, 3, 4]
            release.set()
            await anyio.wait_all_tasks_blocked()
            assert sorted(done) == list(range(8))
            assert takers.tasks == 5  # they stay: no task is started per message
            send.close()


async def test_it_ends_once_the_messages_end_and_the_handlers_are_done() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    release = anyio.Event()
    done: list[int] = []

    async def handle(n: int) -> None:
        await release.wait()
        done.append(n)

    takers = Takers(receive, handle, limit=4)
    with send, receive, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(takers.run)
            for n in range(3):
                await send.send(n)
            send.close()
            await anyio.wait_all_tasks_blocked()
            assert done == []
            release.set()
    assert sorted(done) == [0, 1, 2]
    assert takers.tasks == 0


async def test_each_task_runs_in_its_scope() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    seen: list[str] = []
    entered: list[int] = []

    @contextlib.contextmanager
    def scope() -> Generator[None]:
        entered.append(1)
        token = _task_var.set("in scope")
        try:
            yield
        finally:
            _task_var.reset(token)

    async def handle(_: int) -> None:
        seen.append(_task_var.get())

    takers = Takers(receive, handle, limit=4, scope=scope)
    with send, receive, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(takers.run)
            await send.send(1)
            await send.send(2)
            send.close()
    assert seen == ["in scope", "in scope"]
    assert len(entered) >= 1


async def test_takers_can_run_in_the_callers_task_group() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    done: list[int] = []

    async def handle(n: int) -> None:
        done.append(n)

    takers = Takers(receive, handle, limit=4)
    with send, receive, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            takers.start_in(tg)
            await send.send(1)
            await anyio.wait_all_tasks_blocked()
            assert takers.tasks == 2  # one took the message, one was started to wait
            send.close()
    assert done == [1]
    assert takers.tasks == 0


def test_a_limit_below_one_is_refused() -> None:
    send, receive = anyio.create_memory_object_stream[int]()
    with send, receive, pytest.raises(ValueError, match="limit must be >= 1"):
        Takers(receive, lambda _: anyio.lowlevel.checkpoint(), limit=0)


async def test_on_demand_takers_hold_no_task_until_a_message_is_wanted() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    done: list[int] = []

    async def handle(n: int) -> None:
        done.append(n)

    takers = Takers(receive, handle, limit=4)
    with send, receive, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            takers.start_in(tg, on_demand=True)
            await anyio.wait_all_tasks_blocked()
            assert takers.tasks == 0
            await send.send(1)
            takers.wanted()
            takers.wanted()  # one task is already on its way: no second one
            assert takers.tasks == 1
            await anyio.wait_all_tasks_blocked()
            assert done == [1]
            assert takers.tasks == 2  # the one that took it, and one started to wait
            send.close()
    assert takers.tasks == 0
