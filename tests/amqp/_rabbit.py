"""An independent view of the real RabbitMQ for the tests: counts, clean-up, connections.

It talks to the broker with aiormq on a private asyncio loop in a worker thread, so it
works from tests on either backend and does not go through farine's code under test.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import TYPE_CHECKING, Final, TypeVar

import aiormq
import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ("RABBITMQ_URI", "close_connection", "delete", "queue_counts", "rabbitmq_available")

RABBITMQ_URI: Final = "amqp://guest:guest@127.0.0.1:5672/"

T = TypeVar("T")


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


def rabbitmq_available() -> bool:
    """True when the broker accepts a connection."""

    async def probe() -> bool:
        try:
            connection = await asyncio.wait_for(aiormq.connect(RABBITMQ_URI), 3)
        except Exception:
            return False
        await connection.close()
        return True

    return _run(probe)


async def queue_counts(queue: str) -> tuple[int, int]:
    """Return (messages ready, consumers) of `queue` (passive declare)."""

    async def counts() -> tuple[int, int]:
        connection = await aiormq.connect(RABBITMQ_URI)
        try:
            channel = await connection.channel()
            ok = await channel.queue_declare(queue, passive=True)
            return int(ok.message_count or 0), int(ok.consumer_count or 0)
        finally:
            await connection.close()

    return await anyio.to_thread.run_sync(_run, counts)


async def delete(queues: Sequence[str] = (), exchanges: Sequence[str] = ()) -> None:
    """Delete the test's queues and exchanges (missing ones are fine)."""

    async def remove() -> None:
        connection = await aiormq.connect(RABBITMQ_URI)
        try:
            for queue in queues:
                channel = await connection.channel()
                await channel.queue_delete(queue)
            for exchange in exchanges:
                channel = await connection.channel()
                await channel.exchange_delete(exchange)
        finally:
            await connection.close()

    await anyio.to_thread.run_sync(_run, remove)


def _close_connection(name: str) -> bool:
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    closed = False
    for line in listing.splitlines():
        # Only our own connection, by its unique name: other tests share the broker.
        if f'"{name}"' in line:
            pid = line.split("\t", 1)[0]
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, "farine test: simulated broker close"],
                capture_output=True,
                check=True,
            )
            closed = True
    return closed


async def close_connection(name: str) -> bool:
    """Close the broker connection named `name` from the broker side (rabbitmqctl)."""
    return await anyio.to_thread.run_sync(_close_connection, name)
