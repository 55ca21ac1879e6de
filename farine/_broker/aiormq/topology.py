"""Declaring exchanges, queues and bindings on an aiormq channel; closing one quietly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import aiormq

if TYPE_CHECKING:
    import aiormq.abc

    from farine._broker.interface import (
        Topology,
    )

logger = logging.getLogger("farine.amqp")


async def declare_topology(channel: aiormq.abc.AbstractChannel, topology: Topology) -> None:
    for exchange in topology.exchanges:
        if exchange.name:
            await channel.exchange_declare(
                exchange.name,
                exchange_type=exchange.type,
                durable=exchange.durable,
                auto_delete=exchange.auto_delete,
            )
    for queue in topology.queues:
        await channel.queue_declare(
            queue.name,
            durable=queue.durable,
            auto_delete=queue.auto_delete,
            exclusive=queue.exclusive,
            arguments=dict(queue.arguments) or None,
        )
    for binding in topology.bindings:
        await channel.queue_bind(
            binding.queue,
            binding.exchange,
            routing_key=binding.routing_key,
            arguments=dict(binding.arguments) or None,
        )


async def close_quietly(
    closable: aiormq.abc.AbstractChannel | aiormq.abc.AbstractConnection,
) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closable.close(), 5)
