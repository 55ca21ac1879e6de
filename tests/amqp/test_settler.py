"""Acks of a consumer channel (`ChannelSettler`), on the engine's loop, on both backends."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from pamqp import commands as spec
from pamqp import frame

from farine._broker.aiormq.calls import ChannelCalls
from farine._broker.aiormq.fastpath.calls import FastChannelCalls
from farine._broker.aiormq.settler import ChannelSettler
from farine._broker.aiormq.stepped import SteppedDriver, WakingLoop
from tests.amqp._engine_loop import driven_by, on_engine_loop

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

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
    settler = ChannelSettler(cast("Any", channel), loop, FastChannelCalls())
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


class LeanChannel(FakeChannel):
    """Also has what `internals.settle()` uses: frames queued there are recorded too."""

    number = 7

    def __init__(self, room: int, nacks: bool = True) -> None:
        super().__init__()
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue(room)
        self.connection = type("Connection", (), {"basic_nack": nacks})()
        self._Channel__close_event = asyncio.Event()

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.queued()  # what was queued before went out first
        await super().basic_ack(tag, multiple, wait)

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        self.queued()
        await super().basic_nack(tag, requeue, wait)

    def queued(self) -> None:
        """Record the frames queued so far, as the broker reads them."""
        while not self.write_queue.empty():
            data = self.write_queue.get_nowait().payload
            while data:
                size, channel, method = frame.unmarshal(data)
                assert channel == self.number
                data = data[size:]
                if isinstance(method, spec.Basic.Ack):
                    self.frames.append(("ack", method.delivery_tag, method.multiple))
                elif isinstance(method, spec.Basic.Nack):
                    self.frames.append(("nack", method.delivery_tag, method.requeue))
                else:
                    assert isinstance(method, spec.Basic.Reject)
                    self.frames.append(("reject", method.delivery_tag or 0, method.requeue))


async def settle_lean(
    room: int, nacks: bool
) -> tuple[list[tuple[str, int, bool]], list[tuple[str, int, bool]], int]:
    """Settle 1-4 in three flushes (of 2, 1 and 1 frames) on a channel whose writer
    queue has room for `room` frames.

    Returns the frames the channel's own methods sent, then all frames in order, then
    how many flushes needed a task.
    """
    loop = asyncio.get_running_loop()
    channel = LeanChannel(room, nacks)
    settler = ChannelSettler(cast("Any", channel), loop, FastChannelCalls())
    tasks = 0
    create_task = loop.create_task

    def counting(coro: Any) -> Any:
        nonlocal tasks
        tasks += 1
        return create_task(coro)

    vars(loop)["create_task"] = counting
    try:
        for tag in (1, 2, 3, 4):
            settler.delivered(tag)
        settler.settle(2, "nack", True)
        settler.settle(1, "ack", False)
        settler._flush()  # pyright: ignore[reportPrivateUsage]
        settler.settle(3, "ack", False)
        settler._flush()  # pyright: ignore[reportPrivateUsage]
        settler.settle(4, "reject", False)
        settler._flush()  # pyright: ignore[reportPrivateUsage]
        await settler.drain()
    finally:
        del vars(loop)["create_task"]
    own = list(channel.frames)
    channel.queued()
    return own, channel.frames, tasks


# The acks cover the oldest tags in flight (`multiple`), after the nacks and rejects.
EXPECTED = [("nack", 2, True), ("ack", 1, True), ("ack", 3, True), ("reject", 4, False)]


async def test_a_flush_queues_its_frames_itself_when_the_channel_allows() -> None:
    with anyio.fail_after(10):
        own, frames, tasks = await on_engine_loop(settle_lean(room=10, nacks=True))
    assert (own, frames, tasks) == ([], EXPECTED, 0)


async def test_a_flush_goes_the_channel_s_way_when_it_has_no_room_and_the_next_follows() -> None:
    """1 frame of room: the first flush (2 frames) takes a task and the channel's own
    methods; the next ones would fit, but that task has not run yet: they follow it."""
    with anyio.fail_after(10):
        own, frames, tasks = await on_engine_loop(settle_lean(room=1, nacks=True))
    assert (own, frames, tasks) == (EXPECTED, EXPECTED, 1)


async def test_a_nack_to_a_broker_without_nacks_goes_the_channel_s_way() -> None:
    with anyio.fail_after(10):
        own, frames, tasks = await on_engine_loop(settle_lean(room=10, nacks=False))
    # The first flush holds the nack; the next ones go after it, through the same task.
    assert (own, frames, tasks) == (EXPECTED, EXPECTED, 1)


async def test_a_closing_channel_settles_its_own_way() -> None:
    async def settle() -> list[tuple[str, int, bool]]:
        channel = LeanChannel(10)
        channel._Channel__close_event.set()  # pyright: ignore[reportPrivateUsage]
        settler = ChannelSettler(
            cast("Any", channel), asyncio.get_running_loop(), FastChannelCalls()
        )
        settler.delivered(1)
        settler.settle(1, "ack", False)
        await settler.drain()
        assert channel.write_queue.empty()
        return channel.frames

    with anyio.fail_after(10):
        assert await on_engine_loop(settle()) == [("ack", 1, True)]


async def test_the_last_settle_on_the_engine_loop_is_sent_before_the_loop_turns(
    anyio_backend: str,
) -> None:
    """With one message in flight the broker waits for its ack (to deliver the next
    one, or to confirm a persistent message): the stock path flushes it in `settle()`,
    with no round of the loop (asyncio) or of trio's scheduler (the stepped loop, which
    then runs its sending in a step at once). With two in flight, the first settle
    waits for the loop (the second one joins it)."""

    async def settle(
        loop: asyncio.AbstractEventLoop, run: Callable[[Coroutine[Any, Any, None]], Awaitable[None]]
    ) -> list[tuple[int, int]]:
        channel = FakeChannel()
        settler = ChannelSettler(cast("Any", channel), loop, ChannelCalls())
        seen: list[tuple[int, int]] = []

        def look() -> None:
            pending = len(settler._pending)  # pyright: ignore[reportPrivateUsage]
            seen.append((pending, len(channel.frames)))

        settler.delivered(1)
        settler.settle(1, "ack", False)
        look()
        settler.delivered(2)
        settler.delivered(3)
        settler.settle(2, "ack", False)
        look()
        await run(settler.drain())
        settler.settle(3, "ack", False)
        look()
        await run(settler.drain())
        look()
        return seen

    with anyio.fail_after(10):
        if anyio_backend == "asyncio":
            seen = await settle(asyncio.get_running_loop(), lambda coro: coro)
            # Flushed at once, sent by a task of the loop.
            assert seen == [(0, 0), (1, 0), (0, 2), (0, 3)]
        else:
            async with driven_by(SteppedDriver) as driver:
                assert isinstance(driver.loop, WakingLoop)
                seen = await settle(driver.loop, driver.run)
            # Flushed and sent at once.
            assert seen == [(0, 1), (1, 1), (0, 3), (0, 3)]
