"""Acks of a consumer channel (`_ChannelSettler`), on the engine's loop, on both backends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import anyio
import pytest

from farine.amqp._transport._aiormq import (
    _ChannelSettler,  # pyright: ignore[reportPrivateUsage]
)
from tests.amqp._engine_loop import on_engine_loop

pytestmark = pytest.mark.anyio


class FakeChannel:
    """Records the frames a settler sends."""

    is_closed = False

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("nack", tag, requeue))

    async def basic_reject(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("reject", tag, requeue))


async def settle_all(from_thread: bool) -> tuple[list[tuple[str, int, bool]], bool, bool]:
    """Deliver 1-3, settle them (here or from a thread), then deliver 4."""
    loop = asyncio.get_running_loop()
    channel = FakeChannel()
    settler = _ChannelSettler(cast("Any", channel), loop)
    for tag in (1, 2, 3):
        settler.delivered(tag)
    polling_before = settler._polling  # pyright: ignore[reportPrivateUsage]

    def settle() -> None:
        settler.settle(2, "nack", True)
        settler.settle(1, "ack", False)
        settler.settle(3, "ack", False)

    if from_thread:
        thread = threading.Thread(target=settle)
        thread.start()
        # Joined while holding the engine loop: the flush that the first settle
        # schedules cannot run before the last one (the batch would be split).
        thread.join()
    else:
        settle()
    await settler.drain()
    settler.delivered(4)
    polling_after = settler._polling  # pyright: ignore[reportPrivateUsage]
    settler.settle(4, "ack", False)
    await settler.drain()
    return channel.frames, polling_before, polling_after


async def test_settles_on_the_loop_need_no_flush_timer() -> None:
    with anyio.fail_after(10):
        frames, before, after = await on_engine_loop(settle_all(from_thread=False))
    assert (before, after) == (False, False)
    # The nack first; then the acks, of the oldest tags in flight, as one `multiple`
    # ack (it skips 2, settled already); then 4.
    assert frames == [("nack", 2, True), ("ack", 3, True), ("ack", 4, True)]


async def test_settles_from_another_thread_start_the_flush_timer() -> None:
    with anyio.fail_after(10):
        frames, before, after = await on_engine_loop(settle_all(from_thread=True))
    assert (before, after) == (False, True)
    assert frames == [("nack", 2, True), ("ack", 3, True), ("ack", 4, True)]
