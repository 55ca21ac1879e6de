"""Operating dead-letter queues: count, look at, replay and purge their messages.

`farine dlq` runs these; they work on any broker connection (`memory://` included, for
tests). Replaying publishes each message back (confirmed) before acking it from the
dead-letter queue: interrupted, a replay leaves every message in one queue or the other
(at worst in both).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio

from farine._broker.interface import Outgoing, Topology
from farine.exceptions import ConfigurationError

from ._dead_letter import ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, copy_properties

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from farine._broker import Connection
    from farine._broker.message import Message

__all__ = ("DeadLetterView", "peek", "purge", "replay", "replay_route")

logger = logging.getLogger("farine.amqp")

#: Seconds to wait for the next message of a queue that should hold more.
IDLE_TIMEOUT: Final = 5.0
#: Bytes of a body `peek()` shows.
PREVIEW_BYTES: Final = 200


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    """One message of a dead-letter queue, as `farine dlq show` prints it.

    Attributes:
        message_id: Its `message_id` property.
        headers: Its headers (the `x-farine-*` ones say why it is there).
        size: Its body's size in bytes.
        preview: The start of its body (at most `PREVIEW_BYTES` bytes).
        route: The exchange and routing key a replay publishes it to.
    """

    message_id: str | None
    headers: dict[str, Any]
    size: int
    preview: bytes
    route: tuple[str, str]


def replay_route(message: Message) -> tuple[str, str]:
    """Where a dead letter goes back to: its `x-farine-original-*` headers, else the
    first `x-death` entry the broker added (a queue's own dead-letter exchange)."""
    headers = message.headers
    exchange, routing_key = headers.get(ORIGINAL_EXCHANGE), headers.get(ORIGINAL_ROUTING_KEY)
    if isinstance(exchange, str) and isinstance(routing_key, str):
        return exchange, routing_key
    deaths = headers.get("x-death")
    if isinstance(deaths, list | tuple) and deaths:
        first: object = deaths[-1]  # pyright: ignore[reportUnknownVariableType]
        if isinstance(first, Mapping):
            death: Mapping[str, Any] = first  # pyright: ignore[reportUnknownVariableType]
            keys = death.get("routing-keys")
            key: object = keys[0] if isinstance(keys, list | tuple) and keys else ""  # pyright: ignore[reportUnknownVariableType]
            return str(death.get("exchange") or ""), str(key)  # pyright: ignore[reportUnknownArgumentType]
    return message.exchange, message.routing_key


async def _take(
    connection: Connection, queue: str, limit: int, each: Callable[[Message], Awaitable[None]]
) -> int:
    """Receive up to `limit` messages of `queue` (as many as it holds now) and call
    `await each(message)` on each; the messages `each` leaves unsettled go back."""
    size = await connection.queue_size(queue)
    if size is None:
        raise ConfigurationError(f"no queue {queue!r}")
    wanted = min(limit, size)
    if wanted == 0:
        return 0
    consumer = await connection.consume(queue, prefetch=min(wanted, 100), topology=Topology())
    done = 0
    try:
        while done < wanted:
            with anyio.move_on_after(IDLE_TIMEOUT):
                message = await consumer.__anext__()
                await each(message)
                done += 1
                continue
            break  # the queue emptied under us (another consumer?)
    finally:
        # Shielded: what was not settled must go back to the queue, even when cancelled.
        with anyio.CancelScope(shield=True):
            await consumer.aclose()
    return done


async def peek(connection: Connection, queue: str, limit: int = 10) -> list[DeadLetterView]:
    """Look at up to `limit` messages of `queue`, oldest first; they stay in it.

    Raises:
        ConfigurationError: There is no such queue.
    """
    views: list[DeadLetterView] = []

    async def look(message: Message) -> None:
        views.append(
            DeadLetterView(
                message_id=message.message_id,
                headers=dict(message.headers),
                size=len(message.body),
                preview=message.body[:PREVIEW_BYTES],
                route=replay_route(message),
            )
        )

    await _take(connection, queue, limit, look)
    return views


async def replay(connection: Connection, queue: str, limit: int | None = None) -> int:
    """Publish up to `limit` messages of `queue` back where they were first published,
    each confirmed before it is acked from `queue`; return how many were replayed.

    The `x-farine-*` and `x-death` headers are dropped: a replayed message starts
    again with a full retry budget.

    Raises:
        ConfigurationError: There is no such queue.
        PublishError: A message could not be published back (it stays in `queue`).
    """

    async def send_back(message: Message) -> None:
        exchange, routing_key = replay_route(message)
        headers = {
            key: value
            for key, value in message.headers.items()
            if not key.startswith("x-farine-") and key != "x-death"
        }
        properties = copy_properties(message, headers, None)
        await connection.publish(Outgoing(exchange, routing_key, message.body, properties))
        message.ack()
        logger.info(
            "replayed message %s from %s to exchange %r (routing key %r)",
            message.message_id, queue, exchange, routing_key,
        )  # fmt: skip

    return await _take(connection, queue, limit if limit is not None else 2**31, send_back)


async def purge(connection: Connection, queue: str) -> int:
    """Delete every ready message of `queue`; return how many there were.

    Raises:
        ConfigurationError: There is no such queue.
    """
    return await connection.purge(queue)
