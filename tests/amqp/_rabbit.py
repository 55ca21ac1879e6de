"""An independent view of the real RabbitMQ for the tests: counts, clean-up, connections.

It talks to the broker with aiormq on a private asyncio loop in a worker thread, so it
works from tests on either backend and does not go through farine's code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import uuid
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiormq
import aiormq.abc
import anyio
from pamqp.commands import Basic
from yarl import URL

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence

__all__ = (
    "RABBITMQ_URI",
    "close_connection",
    "delete",
    "queue_counts",
    "rabbitmq_available",
    "seed_call",
    "seed_server",
    "uri_on_port",
)

#: The RabbitMQ the tests use. `FARINE_TEST_AMQP_URI` names another virtual host: .ci/run
#: gives each job one of its own, so jobs running side by side never share a queue.
RABBITMQ_URI: Final = os.environ.get("FARINE_TEST_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")


#: The port of `RABBITMQ_URI` (a proxy's target).
RABBITMQ_PORT: Final = URL(RABBITMQ_URI).port or 5672


def uri_on_port(port: int) -> str:
    """`RABBITMQ_URI` on another port (a proxy's, or one nothing listens on)."""
    return str(URL(RABBITMQ_URI).with_port(port))


REPLY_TIMEOUT: Final = 15.0

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


# -- baguette-messaging's side of the RPC wire format, on raw aiormq -------------------------


async def seed_call(service: str, method: str, body: bytes) -> list[dict[str, Any]]:
    """Call `service.method` as a baguette-messaging client does; return the replies.

    The request is `body` published to exchange `service` with routing key
    `<service>__<method>`, `reply_to` a queue of its own and a correlation id, and no
    farine header. Replies are read up to the end marker or an `__except__`, for at
    most `REPLY_TIMEOUT` seconds (the call runs in a thread anyio cannot cancel).
    """

    async def call() -> list[dict[str, Any]]:
        connection = await aiormq.connect(RABBITMQ_URI)
        try:
            channel = await connection.channel()
            declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
            assert declared is not None
            assert declared.queue is not None
            arrived: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()
            await channel.basic_consume(declared.queue, arrived.put, no_ack=True)
            correlation_id = uuid.uuid4().hex
            properties = Basic.Properties(
                content_type="application/json",
                reply_to=declared.queue,
                correlation_id=correlation_id,
            )
            await channel.basic_publish(
                body, exchange=service, routing_key=f"{service}__{method}", properties=properties
            )
            replies: list[dict[str, Any]] = []
            async with asyncio.timeout(REPLY_TIMEOUT):
                while True:
                    message = await arrived.get()
                    assert message.header.properties.correlation_id == correlation_id
                    reply: dict[str, Any] = json.loads(message.body)
                    replies.append(reply)
                    if reply.get("__end__") or "__except__" in reply:
                        return replies
        finally:
            await connection.close()

    return await anyio.to_thread.run_sync(_run, call)


@contextlib.asynccontextmanager
async def seed_server(
    service: str,
    methods: Mapping[str, Callable[[dict[str, Any]], list[dict[str, Any]]]],
    *,
    reply_exchange: str = "",
) -> AsyncGenerator[list[dict[str, Any]]]:
    """Serve `service` as a baguette-messaging server does, until the block ends.

    Each method maps a decoded request to the reply bodies sent back, in order, to
    `reply_exchange` with the request's `reply_to` as routing key (baguette-messaging
    0.19 publishes to the service's exchange). The server runs on an asyncio loop in a
    thread of its own; the block receives the list of requests as they arrive.
    """
    requests: list[dict[str, Any]] = []
    ready = threading.Event()
    failed: list[BaseException] = []
    state: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        state["stop"] = lambda: loop.call_soon_threadsafe(stop.set)
        connection = await aiormq.connect(RABBITMQ_URI)
        try:
            channel = await connection.channel()
            await channel.exchange_declare(service, exchange_type="direct", durable=True)
            for method, reply in methods.items():
                queue = f"{service}__{method}"
                await channel.queue_declare(queue, durable=True)
                await channel.queue_bind(queue, service, routing_key=queue)

                async def on_request(
                    message: aiormq.abc.DeliveredMessage,
                    reply: Callable[[dict[str, Any]], list[dict[str, Any]]] = reply,
                ) -> None:
                    request: dict[str, Any] = json.loads(message.body)
                    requests.append(request)
                    properties = message.header.properties
                    for body in reply(request):
                        await message.channel.basic_publish(
                            json.dumps(body).encode(),
                            exchange=reply_exchange,
                            routing_key=properties.reply_to or "",
                            properties=Basic.Properties(
                                content_type="application/json",
                                correlation_id=properties.correlation_id,
                            ),
                        )
                    await message.channel.basic_ack(message.delivery_tag or 0)

                await channel.basic_consume(queue, on_request)
            ready.set()
            await stop.wait()
        finally:
            await connection.close()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=f"seed-server-{service}", daemon=True)
    thread.start()
    try:
        assert await anyio.to_thread.run_sync(ready.wait, 15), "the seed server did not start"
        if failed:
            raise failed[0]
        yield requests
    finally:
        stop = state.get("stop")
        if stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                stop()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join, 15)
