"""One supervised consumer: its channel, re-opened and re-declared whenever it is lost."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import aiormq
from pamqp import commands as spec

from farine._broker.aiormq.errors import DECLARATION_ERRORS, describe
from farine._broker.aiormq.settler import ChannelSettler
from farine._broker.aiormq.topology import close_quietly, declare_topology
from farine._broker.interface import (
    BACKOFF,
    Topology,
)
from farine._broker.message import Message
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiormq.abc

    from farine._broker.aiormq.engine import Engine

logger = logging.getLogger("farine.amqp")


class _Attachment:
    """One channel a consumer is attached to: its settler, and whether the broker cancelled."""

    __slots__ = ("cancelled", "channel", "settler")

    def __init__(self, channel: aiormq.abc.AbstractChannel, settler: ChannelSettler) -> None:
        self.channel = channel
        self.settler = settler
        self.cancelled = False


class SupervisedConsumer:
    """One consumer: its channel, re-opened and re-declared whenever it is lost."""

    # Slots, and flags with one future rather than events: a service may hold hundreds.
    __slots__ = (
        "_stop_waiter",
        "_stopped",
        "_task",
        "_watching",
        "attachments",
        "channel",
        "consumer_tag",
        "engine",
        "prefetch",
        "push",
        "queue",
        "settler",
        "topology",
    )

    def __init__(
        self,
        engine: Engine,
        queue: str,
        prefetch: int,
        topology: Topology,
        push: Callable[[Message], None],
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.prefetch = prefetch
        self.topology = topology
        self.push = push
        self.settler: ChannelSettler | None = None
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.consumer_tag: str | None = None
        self._stopped = False
        # Resolved by `_request_stop()`; created on the engine loop by `start()`.
        self._stop_waiter: asyncio.Future[None] | None = None
        self._watching: asyncio.Future[None] | None = None  # resolved to end `_watch()`
        self._task: asyncio.Task[None] | None = None
        self.attachments = 0

    @property
    def consuming(self) -> bool:
        """True while attached to an open channel, receiving deliveries."""
        return self._watching is not None and not self._stopped

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_waiter = loop.create_future()
        if self._stopped:
            self._stop_waiter.set_result(None)
        ready: asyncio.Future[None] = loop.create_future()
        self._task = loop.create_task(self._run(ready))
        try:
            await ready
        except BaseException:
            self._request_stop()
            await self._finish_task()
            raise

    def _request_stop(self) -> None:
        self._stopped = True
        self._wake_watch()
        waiter = self._stop_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _attach(self, connection: aiormq.abc.AbstractConnection) -> _Attachment:
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.basic_qos(prefetch_count=self.prefetch)
            await declare_topology(channel, self.topology)
            settler = ChannelSettler(channel, asyncio.get_running_loop(), self.engine.calls)
            attachment = _Attachment(channel, settler)

            def on_cancel(_: spec.Basic.Cancel) -> None:
                attachment.cancelled = True
                self._wake_watch()

            channel.on_consumer_cancel_callbacks.add(on_cancel)

            def on_message(delivered: aiormq.abc.DeliveredMessage) -> None:
                delivery = delivered.delivery
                assert isinstance(delivery, spec.Basic.Deliver)
                settler.delivered(delivery.delivery_tag or 0)
                self.push(
                    Message(
                        delivered.body,
                        delivery_tag=delivery.delivery_tag or 0,
                        exchange=delivery.exchange or "",
                        routing_key=delivery.routing_key or "",
                        redelivered=bool(delivery.redelivered),
                        properties=delivered.header.properties,
                        settler=settler,
                        consumer_tag=delivery.consumer_tag or "",
                    )
                )

            callback = self.engine.calls.deliver(channel, on_message)
            ok = await channel.basic_consume(self.queue, callback, no_ack=False)
        except BaseException:
            await close_quietly(channel)
            raise
        self.consumer_tag = ok.consumer_tag
        return attachment

    async def _run(self, ready: asyncio.Future[None]) -> None:
        initial, factor, cap = BACKOFF
        delay = initial
        while not self._stopped:
            connection = await self.engine.wait_connection(self._stop_waiter)
            if connection is None:
                break
            try:
                attachment = await self._attach(connection)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done() and isinstance(exc, ConfigurationError):
                    ready.set_exception(exc)  # a declaration the broker refused
                    return
                if not ready.done() and isinstance(exc, DECLARATION_ERRORS):
                    ready.set_exception(
                        ConfigurationError(
                            f"cannot consume from queue {self.queue!r}: {describe(exc)}"
                        )
                    )
                    return
                if isinstance(exc, ConfigurationError):
                    logger.error(
                        "consumer of queue %s: %s; retrying in %.1fs", self.queue, exc, delay
                    )
                    await self._pause(delay)
                    delay = min(delay * factor, cap)
                    continue
                logger.warning(
                    "consumer of queue %s: cannot attach (%s); retrying in %.1fs",
                    self.queue, describe(exc), delay,
                )  # fmt: skip
                await self._pause(delay)
                delay = min(delay * factor, cap)
                continue
            channel, settler = attachment.channel, attachment.settler
            self.channel, self.settler = channel, settler
            self.attachments += 1
            if not ready.done():
                ready.set_result(None)
                logger.debug("consuming from queue %s on channel %s", self.queue, channel.number)
            else:
                logger.info("consumer of queue %s resumed", self.queue)
            reason = await self._watch(attachment)
            if self._stopped:
                return
            settler.lost = True
            logger.warning("consumer of queue %s lost (%s); re-attaching", self.queue, reason)
            await close_quietly(channel)
            if attachment.cancelled:
                # The queue was deleted under us: redeclare at once, then back off if it
                # keeps happening.
                await self._pause(delay)
                delay = min(delay * factor, cap)
            else:
                delay = initial

    async def _watch(self, attachment: _Attachment) -> str:
        """Wait until the channel closes, the broker cancels the consumer, or `cancel()`.

        One future, resolved by whichever comes first: no task per thing waited for.
        """
        closing = cast("asyncio.Future[Any]", attachment.channel.closing)  # pyright: ignore[reportUnknownMemberType]
        watching = asyncio.get_running_loop().create_future()

        def wake(_: object = None) -> None:
            if not watching.done():
                watching.set_result(None)

        closing.add_done_callback(wake)
        self._watching = watching
        if attachment.cancelled or self._stopped:
            wake()
        try:
            await watching
        finally:
            self._watching = None
            closing.remove_done_callback(wake)
        if attachment.cancelled:
            return "cancelled by the broker: its queue was deleted?"
        if closing.done():
            return "channel closed: " + describe(
                None if closing.cancelled() else closing.exception()
            )
        closing.cancel()
        return "stopped"

    def _wake_watch(self) -> None:
        watching = self._watching
        if watching is not None and not watching.done():
            watching.set_result(None)

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds, or until stopped."""
        if self._stop_waiter is not None:
            # `asyncio.wait` leaves the future alone on timeout (`wait_for` would cancel it).
            await asyncio.wait([self._stop_waiter], timeout=delay)
        else:
            await asyncio.sleep(delay)

    async def cancel(self) -> None:
        """Stop deliveries at the broker; the channel stays open for the last acks."""
        self._request_stop()
        await self._finish_task()
        channel, tag = self.channel, self.consumer_tag
        if channel is not None and tag is not None and not channel.is_closed:
            try:
                await asyncio.wait_for(channel.basic_cancel(tag), 10)
            except Exception as exc:
                logger.debug("basic_cancel on queue %s failed: %s", self.queue, describe(exc))

    async def close(self) -> None:
        """Cancel, send the last acks, close the channel (unacked messages are requeued)."""
        await self.cancel()
        if self.settler is not None:
            await self.settler.drain()
            self.settler.lost = True
        if self.channel is not None:
            await close_quietly(self.channel)
        self.engine.consumers.discard(self)

    async def _finish_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)
