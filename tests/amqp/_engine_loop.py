"""Running asyncio code on the AMQP engine's loop, as the transport does, on both backends."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from farine._broker.aiormq.fastpath.driven import TrioDriver

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Coroutine

    from farine._broker.aiormq.stepped import SteppedDriver

T = TypeVar("T")


@contextlib.asynccontextmanager
async def driven() -> AsyncGenerator[TrioDriver]:
    """A running driver of the fast path, stopped on the way out."""
    async with driven_by(TrioDriver) as driver:
        assert isinstance(driver, TrioDriver)
        yield driver


@contextlib.asynccontextmanager
async def driven_by(
    make: Callable[[], TrioDriver | SteppedDriver],
) -> AsyncGenerator[TrioDriver | SteppedDriver]:
    """A running driver made by `make`, stopped on the way out (else its nursery would
    wait forever)."""
    driver = make()
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.drive)
        try:
            yield driver
        finally:
            with trio.CancelScope(shield=True):
                await driver.stop()


async def on_engine_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on an asyncio loop as the engine would: this one, or a driven one."""
    if not _in_trio():
        return await coro
    async with driven() as driver:
        return await driver.run(coro)


def _in_trio() -> bool:
    try:
        return trio.lowlevel.in_trio_task()
    except RuntimeError:
        return False
