"""Running asyncio code on the AMQP engine's loop, as the transport does, on both backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import trio

from farine.amqp._transport._driven import TrioDriver

if TYPE_CHECKING:
    from collections.abc import Coroutine

T = TypeVar("T")


async def on_engine_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on an asyncio loop as the engine would: this one, or a driven one."""
    if not _in_trio():
        return await coro
    driver = TrioDriver()
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.drive)
        try:
            return await driver.run(coro)
        finally:
            with trio.CancelScope(shield=True):
                await driver.stop()


def _in_trio() -> bool:
    try:
        return trio.lowlevel.in_trio_task()
    except RuntimeError:
        return False
