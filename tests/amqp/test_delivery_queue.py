"""The queue between a transport's deliveries and the tasks of a consumer, on both backends.

One case exists on asyncio only: a native cancellation right after a wake-up.
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from farine._broker.interface import DeliveryQueue
from farine._broker.message import Message, Outcome, Properties

pytestmark = pytest.mark.anyio


class Channel:
    """A settler that records outcomes, and that a test can mark lost."""

    def __init__(self) -> None:
        self.alive = True
        self.outcomes: list[tuple[int, Outcome, bool]] = []

    def settle(self, delivery_tag: int, outcome: Outcome, requeue: bool) -> None:
        self.outcomes.append((delivery_tag, outcome, requeue))


def message(tag: int, channel: Channel) -> Message:
    return Message(
        b"{}",
        delivery_tag=tag,
        exchange="x",
        routing_key="rk",
        redelivered=False,
        properties=Properties(),
        settler=channel,
    )


async def test_each_message_goes_to_one_task_in_order() -> None:
    queue = DeliveryQueue()
    channel = Channel()
    taken: list[tuple[int, int]] = []

    async def take(worker: int) -> None:
        while True:
            try:
                got = await queue.receive()
            except anyio.EndOfStream:
                return
            taken.append((worker, got.delivery_tag))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for worker in range(3):
                tg.start_soon(take, worker)
            await anyio.wait_all_tasks_blocked()
            queue.put([message(tag, channel) for tag in range(1, 6)])
            await anyio.wait_all_tasks_blocked()
            queue.put([message(6, channel)])
            await anyio.wait_all_tasks_blocked()
            queue.close()
    assert [tag for _, tag in taken] == [1, 2, 3, 4, 5, 6]
    assert len({worker for worker, _ in taken}) > 1  # the waiting tasks shared the burst


async def test_a_task_finding_messages_ready_still_lets_others_run() -> None:
    queue = DeliveryQueue()
    channel = Channel()
    queue.put([message(tag, channel) for tag in range(1, 4)])
    other_ran = anyio.Event()

    async def other() -> None:
        other_ran.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            # Ready at once, but a checkpoint all the same: after two, a task started
            # before them has run on either backend (trio may run this one first once).
            await queue.receive()
            await queue.receive()
            assert other_ran.is_set()


async def test_a_woken_task_cancelled_before_it_takes_the_message_hands_it_on() -> None:
    queue = DeliveryQueue()
    channel = Channel()
    taken: dict[str, list[int]] = {"first": [], "second": []}

    async def take(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                taken[name].append((await queue.receive()).delivery_tag)
            except anyio.EndOfStream:
                return
            await anyio.lowlevel.checkpoint()

    first, second = anyio.CancelScope(), anyio.CancelScope()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "first", first)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take, "second", second)
            await anyio.wait_all_tasks_blocked()
            queue.put([message(1, channel)])  # wakes the first waiter only...
            first.cancel()  # ...which is cancelled before it runs
            await anyio.wait_all_tasks_blocked()
            queue.close()  # ends the second one if the message went nowhere
    # On asyncio the cancelled task never takes it; on trio its wait already ended, so
    # it may. Either way one task, and only one, has it.
    assert taken["first"] + taken["second"] == [1]
    assert channel.outcomes == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_task_natively_cancelled_after_its_wake_up_hands_the_message_on() -> None:
    # Only asyncio code can cancel a task whose wait just ended (anyio waits for its
    # next checkpoint, and trio has no such race): a Task.cancel() from asyncio code.
    queue = DeliveryQueue()
    channel = Channel()
    got: list[int] = []

    async def take() -> None:
        got.append((await queue.receive()).delivery_tag)

    first = asyncio.get_running_loop().create_task(take())
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(take)
            await anyio.wait_all_tasks_blocked()
            queue.put([message(1, channel)])  # wakes `first` only...
            first.cancel()  # ...which is cancelled before it runs
            await asyncio.wait([first])
            await anyio.wait_all_tasks_blocked()
            queue.close()
    assert first.cancelled()
    assert got == [1]


async def test_closing_ends_the_waiting_tasks_and_requeues_what_nobody_took() -> None:
    queue = DeliveryQueue()
    channel = Channel()
    ended = 0

    async def wait_for_one() -> None:
        nonlocal ended
        with pytest.raises(anyio.EndOfStream):
            await queue.receive()
        ended += 1

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_one)
            tg.start_soon(wait_for_one)
            await anyio.wait_all_tasks_blocked()
            queue.close()
    assert ended == 2
    queue.put([message(7, channel)])  # late deliveries go back to the queue at once
    assert channel.outcomes == [(7, "nack", True)]
    with pytest.raises(anyio.EndOfStream):
        await queue.receive()


async def test_messages_of_a_lost_channel_are_skipped() -> None:
    queue = DeliveryQueue()
    lost, current = Channel(), Channel()
    queue.put([message(1, lost), message(2, lost)])
    lost.alive = False  # the channel was lost to a reconnection meanwhile
    queue.put([message(1, current)])
    with anyio.fail_after(5):
        got = await queue.receive()
    assert got.delivery_tag == 1
    assert got._settler is current  # pyright: ignore[reportPrivateUsage]


async def test_messages_no_task_waits_for_start_a_task_when_one_is_wanted() -> None:
    queue = DeliveryQueue()
    channel = Channel()
    calls: list[int] = []

    class Starter:
        wants = True

        def wants_task(self) -> bool:
            return self.wants

        def wanted(self) -> None:
            calls.append(len(calls))

    starter = Starter()
    queue.put([message(1, channel)])  # before the starter: told once it is set
    queue.set_on_unclaimed(starter)
    await anyio.wait_all_tasks_blocked()  # on asyncio, called in a task of its own
    assert calls == [0]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def take() -> None:
                await queue.receive()
                await queue.receive()

            tg.start_soon(take)
            await anyio.wait_all_tasks_blocked()
            queue.put([message(2, channel)])  # a task waits for it: nobody is told
            assert calls == [0]
    queue.put([message(3, channel)])
    assert calls == [0, 1]
    starter.wants = False  # enough tasks: none is started
    queue.put([message(4, channel)])
    queue.set_on_unclaimed(None)
    queue.put([message(5, channel)])
    assert calls == [0, 1]
