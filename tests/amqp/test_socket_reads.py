"""How the AMQP socket is read: in heap-sized chunks, with large messages arriving whole."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from yarl import URL

from farine._broker import ConnectionOptions, open_connection
from farine._broker.aiormq.fastpath.reader import READ_SIZE
from farine._broker.aiormq.fastpath.transport import TcpTransportFactory
from farine._broker.interface import Binding, ExchangeSpec, Outgoing, QueueSpec, Topology
from farine._broker.message import Properties
from tests.amqp import _rabbit
from tests.amqp._engine_loop import on_engine_loop

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq, pytest.mark.fastpath]


async def test_the_socket_asks_for_heap_sized_reads() -> None:
    async def max_size() -> int:
        reader, writer = await TcpTransportFactory().create(URL(_rabbit.RABBITMQ_URI))
        transport: Any = writer.transport
        try:
            return transport.max_size
        finally:
            del reader
            writer.close()
            await writer.wait_closed()

    with anyio.fail_after(10):
        assert await on_engine_loop(max_size()) == READ_SIZE
    assert READ_SIZE < 128 * 1024  # below glibc's threshold for mapping an allocation


async def test_messages_larger_than_a_read_arrive_whole() -> None:
    name = f"reads-{uuid.uuid4().hex[:8]}"
    topology = Topology(
        exchanges=(ExchangeSpec(name, "direct"),),
        queues=(QueueSpec(name, durable=False, auto_delete=False, exclusive=False),),
        bindings=(Binding(name, name, "rk"),),
    )
    bodies = [bytes([n]) * size for n, size in enumerate((READ_SIZE - 7, 5 * READ_SIZE + 3, 10))]
    try:
        async with open_connection(_rabbit.RABBITMQ_URI, ConnectionOptions()) as connection:
            consumer = await connection.consume(name, prefetch=10, topology=topology)
            for body in bodies:
                await connection.publish(Outgoing(name, "rk", body, Properties()))
            received: list[bytes] = []
            with anyio.fail_after(10):
                async for message in consumer:
                    received.append(message.body)
                    message.ack()
                    if len(received) == len(bodies):
                        break
            assert received == bodies
            await consumer.aclose()
    finally:
        await _rabbit.delete(queues=[name], exchanges=[name])
