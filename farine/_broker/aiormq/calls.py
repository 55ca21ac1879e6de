"""How the engine uses aiormq channels: aiormq's documented API only (the stock path).

`ChannelCalls` is the one interface between the engine and the two ways of talking to
aiormq. This class is the stock way: `connect()`, `basic_publish()`, `basic_consume()`,
`basic_ack()`/`basic_nack()`/`basic_reject()`, with no private name of any dependency.
The fast path (`farine._broker.aiormq.fastpath`) subclasses it and overrides each call
with one that reaches into aiormq; `choose_calls()` there picks one per connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, cast

from pamqp import commands as spec

from farine._broker.aiormq.stepped import SteppedDriver

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    import aiormq
    import aiormq.abc

    from farine._broker.aiormq.hosts import TrioHost
    from farine._broker.aiormq.settler import SettleFrame
    from farine._broker.interface import Outgoing
    from farine._broker.message import PropertiesLike

__all__ = ("ChannelCalls", "to_pamqp")

logger = logging.getLogger("farine.amqp")


def to_pamqp(properties: PropertiesLike, message_id: str | None) -> spec.Basic.Properties:
    """pamqp's properties for `properties` (without the deprecated `cluster_id`), with
    `message_id` for theirs."""
    return spec.Basic.Properties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=properties.headers,  # pyright: ignore[reportArgumentType]
        delivery_mode=properties.delivery_mode,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        expiration=properties.expiration,
        message_id=message_id,
        timestamp=properties.timestamp,
        message_type=properties.message_type,
        user_id=properties.user_id,
        app_id=properties.app_id,
    )


def _nothing(_: aiormq.abc.AbstractConnection) -> None:
    return None


class ChannelCalls:
    """Connect, publish, settle and receive through aiormq's documented API.

    Example:
        ```python
        calls = ChannelCalls()
        confirm = await calls.publish(channel, Outgoing("orders", "placed", b"{}", properties))
        ```
    """

    #: Which path this is, for logs and `AmqpConnection.path`.
    name: Literal["stock", "fast"] = "stock"

    def connect_arguments(
        self, tls: bool
    ) -> tuple[dict[str, Any], Callable[[aiormq.abc.AbstractConnection], None]]:
        """Extra keyword arguments for `aiormq.connect()`, and what to call on the
        connection it opened."""
        return {}, _nothing

    def publish(self, channel: aiormq.abc.AbstractChannel, message: Outgoing) -> Awaitable[Any]:
        """Publish on a confirm channel; awaited, the result is the broker's confirm.

        Raises (when awaited):
            aiormq.PublishError: A `mandatory` message came back unroutable.
            aiormq.ChannelClosed: The channel closed (its reason).
        """
        # `wait` is a keyword of aiormq's `Channel.basic_publish()` (since 7.2, the
        # lowest version allowed), not of its abstract interface.
        return cast("aiormq.Channel", channel).basic_publish(
            message.body,
            exchange=message.exchange,
            routing_key=message.routing_key,
            properties=to_pamqp(message.properties, message.properties.message_id),
            mandatory=message.mandatory,
            # The confirm says the frames were written: waiting for the writer to drain
            # them first would only cost the publishing task one more wake-up.
            wait=False,
        )

    def start_publish(
        self, channel: aiormq.abc.AbstractChannel, message: Outgoing
    ) -> asyncio.Future[Any] | None:
        """Start a publish with no task: the future of its confirm, or None (nothing was
        sent) when `publish()` must do it. The stock path always returns None."""
        return None

    def settle(self, channel: aiormq.abc.AbstractChannel, frames: list[SettleFrame]) -> bool:
        """Queue the frames that settle deliveries at once; False (nothing queued) when
        they must be sent with `basic_ack()` and the like. The stock path returns False."""
        return False

    def deliver(
        self,
        channel: aiormq.abc.AbstractChannel,
        on_message: Callable[[aiormq.abc.DeliveredMessage], None],
    ) -> aiormq.abc.ConsumerCallback:
        """The callback to give `channel.basic_consume()`: it hands each delivery to
        `on_message` (which must not block), logging what it raises."""

        async def callback(message: aiormq.abc.DeliveredMessage) -> None:
            try:
                on_message(message)
            except Exception:
                logger.exception(
                    "a delivery on channel %d could not be handed over", channel.number
                )

        return callback

    def take_confirms(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Let `channel`'s confirms settle their publishes as they are read (fast path
        only; the stock path leaves them to the channel's reader)."""

    def trio_driver(self) -> TrioHost:
        """A new driver for the engine's asyncio loop on the trio backend."""
        return SteppedDriver()
