"""`amqp://` and `amqps://`: RabbitMQ through aiormq, on either anyio backend.

All aiormq calls happen in `Engine`, plain asyncio code that runs on one asyncio loop:

* on the asyncio backend, the service's own loop (`ServiceLoopHost`): calls are awaited
  directly and deliveries go straight into the consumer's stream;
* on the trio backend, a loop in trio's own thread, driven by a trio task
  (`SteppedDriver`, or the fast path's `TrioDriver`): calls are asyncio tasks whose
  results resume the trio caller directly (on the fast path a publish on an open
  channel needs none: it queues its frames and waits for its confirm's future), and
  deliveries go straight into the consumer's stream, with no thread crossing;
* for plain scripts (and blocking code with no runtime), a loop of its own in a daemon
  thread owned by the connection (`ThreadHost`): calls cross through the loops'
  handles, deliveries cross back in batches through the consumer's `Handoff` (one
  wake-up per burst), and acks cross in batches too (`ChannelSettler`).

How channels are used, aiormq's documented API or the fast path, is the engine's
`ChannelCalls`, chosen per connection by `fastpath.channel_calls()`.

Supervision lives in the engine: the connection is re-opened with capped exponential
backoff whenever it drops; each consumer re-opens its channel, redeclares its
exchanges, queues and bindings and consumes again (also after the broker cancelled it,
e.g. because its queue was deleted); publishes wait for the connection within their
timeout and are retried after a connection loss. Every step is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiormq
import anyio
import trio

from farine._broker.aiormq.consumer import SupervisedConsumer
from farine._broker.aiormq.engine import Engine
from farine._broker.aiormq.errors import REFUSALS, RETRYABLE, check_confirm, refused
from farine._broker.aiormq.fastpath import channel_calls
from farine._broker.aiormq.hosts import Host, ServiceLoopHost, ThreadHost
from farine._broker.aiormq.reply import DirectReplyChannel
from farine._broker.errors import PublishError
from farine._broker.interface import (
    Connection,
    ConnectionOptions,
    Consumer,
    Outgoing,
    ReplyChannel,
    Topology,
)
from farine._broker.loops import (
    Handoff,
    LoopHandle,
)
from farine._broker.message import Message

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine

    import aiormq.abc

    from farine._broker.aiormq.calls import ChannelCalls
    from farine._broker.aiormq.fastpath.driven import TrioDriver

__all__ = ("AmqpConnection", "open_amqp", "open_amqp_blocking")

logger = logging.getLogger("farine.amqp")

T = TypeVar("T")


class _AmqpConsumer(Consumer):
    def __init__(self, queue: str, prefetch: int, host: Host) -> None:
        super().__init__(queue, prefetch)
        self._host = host
        self.handoff = Handoff[Message](LoopHandle.current(), self.deliveries.put)
        self.engine_consumer: SupervisedConsumer | None = None

    async def not_ready(self) -> str | None:
        engine_consumer = self.engine_consumer
        if engine_consumer is None or not engine_consumer.consuming:
            return f"not consuming from queue {self.queue_name!r} (connecting)"
        if await self._host.run(engine_consumer.engine.blocked()):  # as AmqpConnection.blocked
            return "the broker blocked the connection (connection.blocked: a resource alarm)"
        return None

    async def cancel(self) -> None:
        if self.engine_consumer is not None:
            await self._host.run(self.engine_consumer.cancel())
        self.deliveries.close()

    async def aclose(self) -> None:
        # Requeue what was received but not started, before the channel closes.
        self.deliveries.close()
        if self.engine_consumer is not None:
            await self._host.run(self.engine_consumer.close())


class _AmqpReplyChannel(ReplyChannel):
    def __init__(self, engine_channel: DirectReplyChannel, connection: AmqpConnection) -> None:
        self._engine_channel = engine_channel
        self._connection = connection

    def publish(self, message: Outgoing) -> Awaitable[None]:
        connection = self._connection
        engine_channel = self._engine_channel
        if connection.closed or engine_channel.closed:
            raise PublishError("the reply channel is closed")
        # The coroutine that publishes, awaited by the caller: no frame of this one's.
        return connection.publish_through(message, engine_channel.channel, engine_channel.get)

    async def aclose(self) -> None:
        if self._connection.closed:
            return
        await self._connection.host.run(self._engine_channel.close())


class AmqpConnection(Connection):
    """A supervised connection to RabbitMQ (see the module docstring)."""

    kind = "amqp"

    def __init__(self, uri: str, options: ConnectionOptions, engine: Engine, host: Host) -> None:
        super().__init__(uri, options)
        self._engine = engine
        self._host = host
        # On the service's own asyncio loop, calls are awaited as they are: one
        # coroutine frame less to go through at each step of a publish.
        self._on_service_loop = isinstance(host, ServiceLoopHost)
        # The fast path's trio driver starts a publish with no asyncio task.
        fast_on_trio = engine.calls.name == "fast" and not isinstance(
            host, ServiceLoopHost | ThreadHost
        )
        self._driver = cast("TrioDriver", host) if fast_on_trio else None

    @property
    def host(self) -> Host:
        """Where the engine runs."""
        return self._host

    @property
    def path(self) -> str:
        """`"fast"` or `"stock"`: which path the connection's channels take."""
        return self._engine.calls.name

    def _run(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """`coro` to await from the caller's task (see the hosts)."""
        return coro if self._on_service_loop else self._host.run(coro)

    @property
    def connected(self) -> bool:
        """True while the connection to the broker is up."""
        return self._engine.connected.is_set()

    @property
    def generation(self) -> int:
        """How many times the connection was opened (1 + reconnections)."""
        return self._engine.generation

    @property
    def reconnects(self) -> int:
        return max(0, self._engine.generation - 1)

    async def blocked(self) -> bool:
        if self.closed:
            return False
        return await self._host.run(self._engine.blocked())

    async def declare(self, topology: Topology) -> None:
        await self._host.run(self._engine.declare(topology))

    async def queue_size(self, queue: str) -> int | None:
        return await self._host.run(self._engine.inspect(queue))

    async def purge(self, queue: str) -> int:
        return await self._host.run(self._engine.inspect(queue, purge=True)) or 0

    def publish(self, message: Outgoing) -> Awaitable[None]:
        if self.closed:
            raise PublishError("the connection is closed")
        return self.publish_through(message, self._engine.publish_channel, None)

    async def publish_through(
        self,
        message: Outgoing,
        channel: aiormq.abc.AbstractChannel | None,
        channel_of: Callable[[], Awaitable[aiormq.abc.AbstractChannel]] | None,
    ) -> None:
        """Publish on `channel`, the open channel of `channel_of` (if any yet; default:
        the publishing channel), and wait for the broker's confirm.

        On trio with the fast path, the publish starts with no asyncio task when it can
        (`Engine.start_publish()`). It takes `Engine.publish()`'s way when something must
        be awaited first, and after a connection loss, which that way retries.
        """
        engine = self._engine
        limit = self.options.publish_timeout if message.timeout is None else message.timeout
        driver = self._driver
        failed: BaseException | None = None
        deadline: float | None = None
        if driver is not None:
            started = driver.call_in_step(engine.start_publish, channel, message, limit)
            if started is not None:
                confirm, watch = started
                try:
                    # A caller cancelled cancels the confirm's future, as it would the task.
                    result = await driver.wait_future(confirm, confirm.cancel)
                except asyncio.CancelledError:
                    if watch.timed_out():
                        raise engine.timeout_error(message, limit) from None
                    # As a publish task cancelled by the loop stopping.
                    raise PublishError("the AMQP connection is closed") from None
                except REFUSALS as exc:
                    raise refused(exc, message.exchange, message.routing_key) from None
                except RETRYABLE as exc:
                    failed, deadline = exc, watch.deadline
                else:
                    check_confirm(result, message.exchange)
                    return
                finally:
                    engine.forget(watch)
        await self._run(engine.publish(message, limit, channel_of, failed, deadline))

    def publish_blocking(self, message: Outgoing) -> None:
        if self.closed:
            raise PublishError("the connection is closed")
        limit = self.options.publish_timeout if message.timeout is None else message.timeout
        self._host.run_blocking(
            self._engine.publish(message, limit),
            limit + 5,  # the engine enforces `limit`; this only guards against a stuck loop
        )

    async def consume(self, queue: str, *, prefetch: int, topology: Topology) -> Consumer:
        consumer = _AmqpConsumer(queue, prefetch, self._host)
        engine_consumer = SupervisedConsumer(
            self._engine, queue, prefetch, topology, consumer.handoff.push
        )
        consumer.engine_consumer = engine_consumer
        await self._host.run(self._engine.add_consumer(engine_consumer))
        return consumer

    async def open_reply_channel(
        self, on_replies: Callable[[list[Message]], None], on_lost: Callable[[], None]
    ) -> ReplyChannel:
        if self.closed:
            raise PublishError("the connection is closed")
        home = LoopHandle.current()
        handoff = Handoff[Message](home, on_replies)

        def lost() -> None:
            home.call_soon(on_lost)

        engine_channel = DirectReplyChannel(self._engine, handoff.push, lost)

        async def register() -> None:
            self._engine.reply_channels.add(engine_channel)

        await self._host.run(register())
        return _AmqpReplyChannel(engine_channel, self)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._host.run(self._engine.close())
        finally:
            await self._host.stop()

    def close_blocking(self) -> None:
        """Close from a thread that runs no event loop (scripts, at exit)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self._host.run_blocking(self._engine.close(), 10)
        if isinstance(self._host, ThreadHost):
            self._host.stop_blocking()


def connection_name(prefix: str = "farine") -> str:
    """A unique connection name, so a connection can be told apart in the broker's list."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def open_amqp(uri: str, options: ConnectionOptions) -> AsyncGenerator[AmqpConnection]:
    """Open a supervised AMQP connection for the running event loop (asyncio or trio).

    Raises:
        BrokerUnavailable: No connection within `connect_retry_timeout`.
        ValueError: `options.fast_path` (or `FARINE_AMQP_FAST_PATH`) is not auto, on or off.
    """
    calls = channel_calls(options.fast_path)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        async with _open_on(ServiceLoopHost(loop), calls, uri, options) as connection:
            yield connection
        return
    # trio: the engine's loop runs in this thread, driven by a task of this run.
    driver = calls.trio_driver()
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            # Shielded: when `start()` is cancelled, trio leaves the started task under
            # it, and `start()` waits for it to end; `drive()` ends only on `stop()`,
            # which is called below, after `start()` returned. Starting takes no I/O.
            with trio.CancelScope(shield=True):
                await nursery.start(driver.drive)
            try:
                async with _open_on(driver, calls, uri, options) as connection:
                    yield connection
            finally:
                with trio.CancelScope(shield=True):
                    await driver.stop()
    except BaseExceptionGroup as group:
        # The nursery wraps what the caller's block (or connecting) raised: hand it
        # back as it was raised, as on asyncio. Raised below, outside this handler, so
        # that it does not get the group as its context.
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
    if error is not None:
        raise error


@contextlib.asynccontextmanager
async def _open_on(
    host: Host, calls: ChannelCalls, uri: str, options: ConnectionOptions
) -> AsyncGenerator[AmqpConnection]:
    engine = Engine(uri, options, calls)
    try:
        await host.run(engine.start())
    except BaseException:
        with anyio.CancelScope(shield=True):
            await host.stop()
        raise
    connection = AmqpConnection(uri, options, engine, host)
    try:
        yield connection
    finally:
        # Closing must finish even when the runtime is being cancelled: it sends the
        # last acks and lets the broker requeue what is unacked right away.
        with anyio.CancelScope(shield=True), anyio.move_on_after(15):
            await connection.aclose()


def open_amqp_blocking(uri: str, options: ConnectionOptions) -> AmqpConnection:
    """Open a supervised AMQP connection on its own thread (for code with no event loop).

    Raises:
        BrokerUnavailable: No connection within `connect_retry_timeout`.
        ValueError: `options.fast_path` (or `FARINE_AMQP_FAST_PATH`) is not auto, on or off.
    """
    calls = channel_calls(options.fast_path)
    host = ThreadHost(options.name)
    engine = Engine(uri, options, calls)
    try:
        host.run_blocking(engine.start(), None)
    except BaseException:
        host.stop_blocking()
        raise
    return AmqpConnection(uri, options, engine, host)
