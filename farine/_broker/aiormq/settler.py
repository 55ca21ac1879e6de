"""Acks, nacks and rejects of one consumer channel, sent in batches."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Final

import aiormq

from farine._broker.aiormq.errors import describe
from farine._broker.aiormq.stepped import WakingLoop
from farine._broker.loops import (
    LoopHandle,
)
from farine._broker.message import Outcome

if TYPE_CHECKING:
    import aiormq.abc

    from farine._broker.aiormq.calls import ChannelCalls

logger = logging.getLogger("farine.amqp")

#: How often, at first, acks from other threads are flushed while messages are in flight;
#: the interval doubles, up to the cap, while there is nothing to flush.
ACK_FLUSH_INTERVAL: Final = (0.001, 0.01)


#: A frame that settles deliveries: outcome, delivery tag, `multiple`, `requeue`.
SettleFrame = tuple[Outcome, int, bool, bool]


def settle_frames(batch: list[tuple[int, Outcome, bool]], oldest: int | None) -> list[SettleFrame]:
    """The frames that settle `batch`, in order, `oldest` being the oldest delivery tag
    still in flight.

    Acks of tags older than every delivery still in flight go as one frame, sent after
    the nacks and rejects so that it can never cover one of those.
    """
    frames: list[SettleFrame] = []
    covered = 0
    for tag, outcome, requeue in batch:
        if outcome == "ack":
            if oldest is None or tag < oldest:
                covered = max(covered, tag)
            else:
                frames.append(("ack", tag, False, False))
        else:
            frames.append((outcome, tag, False, requeue))
    if covered:
        frames.append(("ack", covered, True, False))
    return frames


class ChannelSettler:
    """Acks, nacks and rejects of one consumer channel, sent in batches.

    `settle()` may be called from any thread (a `def` handler's worker thread, the trio
    loop). Waking the engine loop from another thread costs a system call and a GIL
    hand-off, about as much as the ack itself; so while other messages are still being
    handled, settles from other threads wake nobody: they ride along with the next
    wake-up of the engine loop (a publish, another settle) or, at the latest, a timer on
    it flushes them (every millisecond while there is traffic, backing off when there
    is none; only once settles came from another thread). The settle of the last
    message in flight wakes the loop at once: nothing else would carry it soon, and the
    broker may be waiting for it (to deliver more within the prefetch window, or to
    confirm a persistent message to its publisher: RabbitMQ confirms one that was acked
    without writing it to disk). Settles made on the engine loop are flushed once its
    ready callbacks have run, except the settle of the last message in flight, which is
    flushed at once (on trio's stepped loop, in a step run by the settling task).

    Each frame is a system call too: acks of the oldest deliveries of the channel go as
    one `basic.ack` with `multiple` set (valid as long as no older delivery is still
    unsettled: the set of tags in flight, bounded by the prefetch count, tells). On the
    fast path a flush queues its frames itself (`ChannelCalls.settle()`), unless frames
    of an earlier flush still wait for a task to send them their own way: then they
    follow, in order.
    """

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        loop: asyncio.AbstractEventLoop,
        calls: ChannelCalls,
    ) -> None:
        self.channel = channel
        self._calls = calls
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._inbox = LoopHandle.of_asyncio_loop(loop, self._loop_thread)
        self._lock = threading.Lock()
        self._pending: list[tuple[int, Outcome, bool]] = []
        self._scheduled = False
        self._riding = False
        self._unsettled = 0
        self._polling = False
        self._off_loop = False  # a settle came from another thread
        self._interval = ACK_FLUSH_INTERVAL[0]
        # Engine loop only: tags delivered and not settled yet; the frames of flushes
        # waiting to be written; the one task writing them, in order (a `multiple` ack
        # must not overtake an older nack).
        self._in_flight: set[int] = set()
        self._outbox: list[list[SettleFrame]] = []  # rarely more than one: a list
        self._sender: asyncio.Task[None] | None = None
        self.lost = False

    @property
    def alive(self) -> bool:
        return not self.lost and not self.channel.is_closed

    def delivered(self, delivery_tag: int) -> None:
        """Count a delivery (on the engine loop) and make sure the flush timer runs.

        The timer only serves settles from other threads: until one came, none runs
        (settles on the engine loop are flushed once its ready callbacks have run).
        """
        self._in_flight.add(delivery_tag)
        with self._lock:
            self._unsettled += 1
            if self._polling or not self._off_loop:
                return
            self._polling = True
            self._interval = ACK_FLUSH_INTERVAL[0]
        self._loop.call_later(self._interval, self._tick)

    def settle(self, delivery_tag: int, outcome: Outcome, requeue: bool) -> None:
        on_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            self._pending.append((delivery_tag, outcome, requeue))
            self._unsettled -= 1
            last = not self._unsettled
            if not on_loop:
                self._off_loop = True  # from the next delivery on, the timer runs
            if self._scheduled:
                return
            if self._polling and not on_loop and self._unsettled > 0:
                if self._riding:
                    return
                self._riding = True
                lazily = True
            else:
                self._scheduled = True
                lazily = False
        if on_loop and last:
            # The last message in flight: nothing else would carry its frame soon, and
            # the broker may be waiting for it. On trio, flushed in a step run now.
            if isinstance(self._loop, WakingLoop):
                self._loop.call_urgent(self._flush)
            else:
                self._flush()
        elif on_loop:
            self._loop.call_soon(self._flush)
        elif lazily:
            self._inbox.call_soon_lazily(self._flush)
        elif not self._inbox.call_soon(self._flush):
            # The engine loop is closed: the broker requeues on its own.
            logger.debug("engine loop closed; %s of tag %d dropped", outcome, delivery_tag)

    def _tick(self) -> None:
        flushed = self._flush()
        with self._lock:
            if not self._in_flight or self.lost or self.channel.is_closed:
                self._polling = False
                return
            low, high = ACK_FLUSH_INTERVAL
            self._interval = low if flushed else min(self._interval * 2, high)
        self._loop.call_later(self._interval, self._tick)

    def _flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, []
            self._scheduled = self._riding = False
        if not batch:
            return 0
        in_flight = self._in_flight
        for tag, _, _ in batch:
            in_flight.discard(tag)
        if self.channel.is_closed:
            logger.info(
                "channel closed: %d ack(s)/nack(s) dropped; the broker redelivers those messages",
                len(batch),
            )
            return len(batch)
        frames = settle_frames(batch, min(in_flight, default=None))
        if self._sender is None:
            if self._calls.settle(self.channel, frames):
                return len(batch)
            self._sender = self._loop.create_task(self._send_all())
        self._outbox.append(frames)
        return len(batch)

    async def _send_all(self) -> None:
        try:
            while self._outbox:
                await self._send(self._outbox.pop(0))
        finally:
            self._sender = None

    async def _send(self, frames: list[SettleFrame]) -> None:
        channel = self.channel
        try:
            for outcome, tag, multiple, requeue in frames:
                if outcome == "ack":
                    await channel.basic_ack(tag, multiple=multiple, wait=False)
                elif outcome == "nack":
                    await channel.basic_nack(tag, requeue=requeue, wait=False)
                else:
                    await channel.basic_reject(tag, requeue=requeue, wait=False)
        except Exception as exc:
            logger.info("could not settle messages (%s); the broker redelivers them", describe(exc))

    async def drain(self) -> None:
        """Send what is queued now and wait until it is written."""
        self._flush()
        while self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
