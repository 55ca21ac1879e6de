"""Direct reply-to on the engine loop: a confirm channel that consumes the replies."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import aiormq
from pamqp import commands as spec

from farine._broker.aiormq.topology import close_quietly
from farine._broker.errors import PublishError
from farine._broker.interface import (
    DIRECT_REPLY_TO,
    NO_ACK,
)
from farine._broker.message import Message

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiormq.abc

    from farine._broker.aiormq.engine import Engine

logger = logging.getLogger("farine.amqp")


class DirectReplyChannel:
    """Direct reply-to on the engine loop: a confirm channel consuming the replies no-ack.

    Opened by the first publish, and opened again by the next publish after it is lost
    (replies to what was published on the lost channel cannot arrive: `lost` is called).
    """

    def __init__(
        self, engine: Engine, push: Callable[[Message], None], lost: Callable[[], None]
    ) -> None:
        self.engine = engine
        self.push = push
        self.lost = lost
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.closed = False
        self._lock = asyncio.Lock()

    async def get(self) -> aiormq.abc.AbstractChannel:
        """Return the open channel, opening one (and its reply consumer) if needed."""
        channel = self.channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            channel = self.channel
            if channel is not None and not channel.is_closed:
                return channel
            if self.closed:
                raise PublishError("the reply channel is closed")
            connection = await self.engine.wait_connection()
            if connection is None:
                raise PublishError("the connection is closed")
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                callback = self.engine.calls.deliver(channel, self._on_message)
                await channel.basic_consume(DIRECT_REPLY_TO, callback, no_ack=True)
            except BaseException:
                await close_quietly(channel)
                raise
            closing = cast("asyncio.Future[Any]", channel.closing)  # pyright: ignore[reportUnknownMemberType]
            closing.add_done_callback(self._on_closed)
            self.channel = channel
            return channel

    def _on_message(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        delivery = delivered.delivery
        assert isinstance(delivery, spec.Basic.Deliver)
        self.push(
            Message(
                delivered.body,
                delivery_tag=delivery.delivery_tag or 0,
                exchange=delivery.exchange or "",
                routing_key=delivery.routing_key or "",
                redelivered=False,
                properties=delivered.header.properties,
                settler=NO_ACK,
                consumer_tag=delivery.consumer_tag or "",
            )
        )

    def _on_closed(self, _: asyncio.Future[Any]) -> None:
        if not self.closed and not self.engine.closing:
            logger.info("reply channel lost; replies on their way to it are lost")
            self.lost()

    async def close(self) -> None:
        self.closed = True
        self.engine.reply_channels.discard(self)
        if self.channel is not None:
            await close_quietly(self.channel)
