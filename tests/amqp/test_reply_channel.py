"""Direct reply-to (`amq.rabbitmq.reply-to`) on memory:// and RabbitMQ, on both backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from farine._broker import (
    DIRECT_REPLY_TO,
    ConnectionOptions,
    QueueSpec,
    Topology,
    is_direct_reply_to,
    open_connection,
)
from farine._broker.interface import Outgoing
from farine.amqp import Message, Properties, UnroutableError

if TYPE_CHECKING:
    from tests.amqp.conftest import Broker

pytestmark = pytest.mark.anyio


async def test_replies_to_a_reply_channel_arrive_without_a_queue(broker: Broker) -> None:
    queue = broker.queue("requests")
    replies: list[Message] = []
    arrived = anyio.Event()

    def on_replies(messages: list[Message]) -> None:
        replies.extend(messages)
        if len(replies) >= 2:
            arrived.set()

    async with open_connection(broker.uri, ConnectionOptions(name="test")) as connection:
        topology = Topology(queues=(QueueSpec(queue, durable=False, auto_delete=True),))
        requests = await connection.consume(queue, prefetch=8, topology=topology)
        channel = await connection.open_reply_channel(on_replies, lambda: None)
        try:
            properties = Properties(correlation_id="c1", reply_to=DIRECT_REPLY_TO)
            await channel.publish(Outgoing("", queue, b"request", properties))
            with anyio.fail_after(10):
                request = await requests.__anext__()
            request.ack()
            # The broker gives the request the channel's own address to reply to.
            reply_to = request.reply_to
            assert reply_to is not None
            assert is_direct_reply_to(reply_to)
            assert reply_to != DIRECT_REPLY_TO
            await connection.publish(
                Outgoing("", reply_to, b"one", Properties(correlation_id="c1"), mandatory=False)
            )
            # As RabbitMQ does: a mandatory reply is delivered, yet reported unroutable.
            with pytest.raises(UnroutableError):
                await connection.publish(
                    Outgoing("", reply_to, b"two", Properties(correlation_id="c1"))
                )
            with anyio.fail_after(10):
                await arrived.wait()
            assert [(m.body, m.correlation_id) for m in replies] == [(b"one", "c1"), (b"two", "c1")]
            # Replies come without acks: settling them is a no-op.
            replies[0].ack()
        finally:
            await channel.aclose()
            await requests.aclose()
