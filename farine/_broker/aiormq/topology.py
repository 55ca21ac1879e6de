"""Declaring exchanges, queues and bindings on an aiormq channel; closing one quietly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import aiormq
import aiormq.abc

from farine._broker.aiormq.errors import access_refused, refused_declaration
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from farine._broker.interface import (
        Topology,
    )

logger = logging.getLogger("farine.amqp")


async def declare_topology(channel: aiormq.abc.AbstractChannel, topology: Topology) -> None:
    """Declare `topology` on `channel`.

    Raises:
        ConfigurationError: The broker refused a declaration that disagrees with an
            existing queue or exchange (PRECONDITION_FAILED): the channel is closed, and
            the error names the argument and both values.
        ResourceRefused: The user's permissions do not allow a declaration or binding
            (ACCESS_REFUSED): the channel is closed, and the error names what was refused.
        aiormq.AMQPError: Another failure.
    """
    for exchange in topology.exchanges:
        if exchange.name:
            try:
                await channel.exchange_declare(
                    exchange.name,
                    exchange_type=exchange.type,
                    durable=exchange.durable,
                    auto_delete=exchange.auto_delete,
                )
            except aiormq.ChannelAccessRefused as exc:
                raise access_refused(exc, "exchange", exchange.name) from None
            except aiormq.ChannelPreconditionFailed as exc:
                requested = {
                    "type": exchange.type,
                    "durable": exchange.durable,
                    "auto_delete": exchange.auto_delete,
                }
                raise refused_declaration(exc, "exchange", exchange.name, requested) from None
    for queue in topology.queues:
        try:
            await channel.queue_declare(
                queue.name,
                durable=queue.durable,
                auto_delete=queue.auto_delete,
                exclusive=queue.exclusive,
                arguments=dict(queue.arguments) or None,
            )
        except aiormq.ChannelAccessRefused as exc:
            raise access_refused(exc, "queue", queue.name) from None
        except aiormq.ChannelPreconditionFailed as exc:
            requested = {
                "durable": queue.durable,
                "auto_delete": queue.auto_delete,
                "exclusive": queue.exclusive,
                **dict(queue.arguments),
            }
            raise refused_declaration(exc, "queue", queue.name, requested) from None
    for binding in topology.bindings:
        try:
            await channel.queue_bind(
                binding.queue,
                binding.exchange,
                routing_key=binding.routing_key,
                arguments=dict(binding.arguments) or None,
            )
        except aiormq.ChannelAccessRefused as exc:
            where = f"{binding.queue!r} to exchange {binding.exchange!r}"
            raise access_refused(exc, "binding of queue", where) from None


async def close_quietly(
    closable: aiormq.abc.AbstractChannel | aiormq.abc.AbstractConnection,
) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closable.close(), 5)


async def queue_size(channel: aiormq.abc.AbstractChannel, queue: str) -> int | None:
    """Messages ready in `queue`, or None when it does not exist (the channel then closes)."""
    try:
        ok = await channel.queue_declare(queue, passive=True)
    except aiormq.ChannelNotFoundEntity:
        return None
    return int(ok.message_count or 0)


async def purge_queue(channel: aiormq.abc.AbstractChannel, queue: str) -> int:
    """Remove the ready messages of `queue`; return how many were removed.

    Raises:
        ConfigurationError: There is no such queue (the channel then closes).
    """
    try:
        ok = await channel.queue_purge(queue)
    except aiormq.ChannelNotFoundEntity:
        raise ConfigurationError(f"no queue {queue!r}") from None
    return int(ok.message_count or 0)
