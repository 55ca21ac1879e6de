"""The aiormq side of a connection: connecting, supervision, publishing, on one asyncio loop."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiormq
import aiormq.abc

from farine._broker.aiormq.deadlines import PublishDeadlines, PublishWatch
from farine._broker.aiormq.errors import (
    REFUSALS,
    RETRYABLE,
    TransportEchoFilter,
    check_confirm,
    describe,
    not_retried,
    refused,
    unreachable_kind,
)
from farine._broker.aiormq.tls import client_context, verifies
from farine._broker.aiormq.topology import (
    close_quietly,
    declare_topology,
    purge_queue,
    queue_size,
)
from farine._broker.errors import BrokerUnavailable, PublishError, PublishTimeout
from farine._broker.interface import (
    BACKOFF,
    ConnectionOptions,
    Outgoing,
    Topology,
)
from farine._cluster import split_nodes
from farine._redact import redact

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

    from farine._broker.aiormq.calls import ChannelCalls
    from farine._broker.aiormq.consumer import SupervisedConsumer
    from farine._broker.aiormq.reply import DirectReplyChannel

logger = logging.getLogger("farine.amqp")
# aiormq logs each failed or closed connection at ERROR; farine logs it once, with why.
logging.getLogger("aiormq.connection").addFilter(TransportEchoFilter())


def _connection_url(uri: str, options: ConnectionOptions) -> str:
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", str(options.heartbeat))
    query.setdefault("name", options.name)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _shown(url: str) -> str:
    """A node's URL as logs show it: password masked, without farine's query."""
    return redact(url.partition("?")[0])


class Engine:
    """The aiormq side: connection, supervision, publishing. Runs on one asyncio loop."""

    def __init__(self, uri: str, options: ConnectionOptions, calls: ChannelCalls) -> None:
        self.uri = uri
        #: How channels are used: aiormq's documented API, or the fast path.
        self.calls = calls
        self.shown_uri = redact(uri)
        self.options = options
        #: One URL per node of the broker, tried in order at each (re)connection.
        self.urls = tuple(_connection_url(node, options) for node in split_nodes(uri))
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.consumers: set[SupervisedConsumer] = set()
        self.reply_channels: set[DirectReplyChannel] = set()
        self.generation = 0
        self.closing = False
        self._connected: asyncio.Event | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._publish_channel: aiormq.abc.AbstractChannel | None = None
        self._publish_lock: asyncio.Lock | None = None
        self._declared: set[str] = set()
        self._deadlines: PublishDeadlines | None = None
        self._tls_contexts: dict[str, ssl.SSLContext] = {}

    @property
    def connected(self) -> asyncio.Event:
        assert self._connected is not None, "engine not started"
        return self._connected

    async def start(self) -> None:
        """Connect (retrying up to `connect_retry_timeout`), then supervise the connection.

        Raises:
            BrokerUnavailable: No connection within `connect_retry_timeout`.
        """
        loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        self._publish_lock = asyncio.Lock()
        self._deadlines = PublishDeadlines(loop)
        first: asyncio.Future[None] = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(first))
        try:
            await first
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> aiormq.abc.AbstractConnection:
        """Connect to the first node that answers, in the order given.

        Raises:
            Exception: The last node's error when none answers, or at once an error that
                trying again will not fix (see `not_retried`).
        """
        error: Exception | None = None
        for url in self.urls:
            try:
                connection = await self._connect_to(url)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not_retried(exc, self.shown_uri) is not None:
                    raise
                if len(self.urls) > 1:
                    logger.info("cannot connect to node %s (%s)", _shown(url), describe(exc))
                error = exc
                continue
            if len(self.urls) > 1:
                logger.info("connected to node %s", _shown(url))
            return connection
        assert error is not None
        raise error

    async def _connect_to(self, url: str) -> aiormq.abc.AbstractConnection:
        properties: dict[str, Any] = {"connection_name": self.options.name, "product": "farine"}
        properties.update(self.options.client_properties)
        tls = urlsplit(url).scheme == "amqps"  # aiormq opens TLS itself
        arguments, opened = self.calls.connect_arguments(tls)
        if tls:
            arguments["context"] = await self._tls_context(url)
        connection = await asyncio.wait_for(
            aiormq.connect(  # pyright: ignore[reportUnknownMemberType]
                url,
                client_properties=properties,  # pyright: ignore[reportArgumentType]
                **arguments,
            ),
            self.options.connect_timeout or None,
        )
        opened(connection)
        return connection

    async def _tls_context(self, url: str) -> ssl.SSLContext:
        context = self._tls_contexts.get(url)
        if context is None:
            loop = asyncio.get_running_loop()
            # Reading certificate files blocks: not on the loop.
            context = await loop.run_in_executor(None, client_context, url, self.options)
            self._tls_contexts[url] = context
        if not verifies(url, self.options):
            logger.warning(
                "TLS verification is off for %s: the broker's certificate and host name "
                "are not checked", _shown(url),
            )  # fmt: skip
        return context

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        initial, factor, cap = BACKOFF
        delay = initial
        started = loop.time()
        attempts = 0
        while not self.closing:
            attempts += 1
            try:
                connection = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = describe(exc)
                final = not_retried(exc, self.shown_uri)
                if final is not None and not first.done():
                    # Trying again changes nothing until someone fixes the settings.
                    first.set_exception(final)
                    return
                if final is not None:
                    logger.error("cannot reconnect: %s; retrying in %.1fs", final, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * factor, cap)
                    continue
                if not first.done():
                    elapsed = loop.time() - started
                    limit = self.options.connect_retry_timeout
                    if elapsed >= limit:
                        kind = unreachable_kind(exc, self.options.connect_timeout)
                        what = (
                            f"cannot connect to the AMQP broker at {self.shown_uri}: {kind} "
                            f"({attempts} attempt(s) in {elapsed:.1f}s"
                        )
                        first.set_exception(
                            BrokerUnavailable(
                                f"{what}; connect_retry_timeout = {limit:g}s)", failure=what
                            )
                        )
                        return
                    # The last attempt is made when the limit is reached, not before.
                    delay = min(delay, max(limit - elapsed, 0.0))
                logger.warning(
                    "cannot connect to %s (%s); retrying in %.1fs", self.shown_uri, reason, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * factor, cap)
                continue
            self.connection = connection
            self.generation += 1
            self._publish_channel = None
            self._declared.clear()
            self.connected.set()
            if self.generation == 1:
                logger.info("AMQP broker: %s (connection %s)", self.shown_uri, self.options.name)
            else:
                logger.info("reconnected to %s after %d attempt(s)", self.shown_uri, attempts)
            attempts = 0
            delay = initial
            if not first.done():
                first.set_result(None)
            closing = cast("asyncio.Future[Any]", connection.closing)
            await asyncio.wait([closing])
            self.connected.clear()
            if self.closing:
                return
            reason = describe(None if closing.cancelled() else closing.exception())
            logger.warning("connection to %s lost (%s); reconnecting", self.shown_uri, reason)

    async def wait_connection(
        self, stop: asyncio.Future[None] | None = None
    ) -> aiormq.abc.AbstractConnection | None:
        """Return an open connection, waiting for one; None once closing or `stop` is done."""
        while not self.closing and not (stop is not None and stop.done()):
            connection = self.connection
            if self.connected.is_set() and connection is not None and not connection.is_closed:
                return connection
            if connection is not None and connection.is_closed:
                # The supervisor has not noticed yet; it sets the event again once reconnected.
                self.connected.clear()
            connected = asyncio.ensure_future(self.connected.wait())
            # `stop` itself is waited for, never cancelled: it belongs to the caller.
            waiters: list[asyncio.Future[Any]] = [connected] if stop is None else [connected, stop]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                connected.cancel()
        return None

    async def blocked(self) -> bool:
        """True while the broker blocks the connection (`connection.blocked`: an alarm).

        aiormq has no public flag for it, only `ready()`, which waits while blocked: it
        is probed, on demand, with one loop iteration.
        """
        connection = self.connection
        if connection is None or connection.is_closed:
            return False
        probe = asyncio.ensure_future(connection.ready())
        await asyncio.sleep(0)  # the probe's first step runs first: done unless it waits
        if probe.done():
            return False
        probe.cancel()
        return True

    @property
    def publish_channel(self) -> aiormq.abc.AbstractChannel | None:
        """The publishing channel, if opened yet (it may be closed)."""
        return self._publish_channel

    async def _channel(self) -> aiormq.abc.AbstractChannel:
        channel = self._publish_channel
        if channel is not None and not channel.is_closed:
            return channel
        assert self._publish_lock is not None
        async with self._publish_lock:
            channel = self._publish_channel
            if channel is None or channel.is_closed:
                connection = await self.wait_connection()
                if connection is None:
                    raise PublishError("the connection is closed")
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self.calls.take_confirms(channel)
                self._publish_channel = channel
                self._declared.clear()
            return channel

    async def declare(self, topology: Topology) -> None:
        """Declare `topology` on the publishing channel."""
        channel = await self._channel()
        await declare_topology(channel, topology)

    async def inspect(self, queue: str, purge: bool = False) -> int | None:
        """Messages ready in `queue` (None: no such queue), or purge it, on a channel of
        its own (a missing queue closes the channel it is asked about on)."""
        connection = await self.wait_connection()
        if connection is None:
            raise PublishError("the connection is closed")
        channel = await connection.channel()
        try:
            if purge:
                return await purge_queue(channel, queue)
            return await queue_size(channel, queue)
        finally:
            await close_quietly(channel)

    async def publish(
        self,
        message: Outgoing,
        timeout: float,  # noqa: ASYNC109  # enforced on the engine loop, maybe another thread
        channel_of: Callable[[], Awaitable[aiormq.abc.AbstractChannel]] | None = None,
        failed: BaseException | None = None,
        deadline: float | None = None,
    ) -> None:
        """Publish and wait for the confirm, waiting out and retrying connection losses.

        Args:
            message: What to publish (its own `timeout` is resolved into `timeout`).
            timeout: Seconds until the publish fails with `PublishTimeout`.
            channel_of: Returns the channel to publish on (default: the publishing
                channel).
            failed: The error of a first try (by `start_publish()`), to count and retry
                within the same `deadline`.
            deadline: On the loop's clock (default: in `timeout` seconds).

        Raises:
            PublishTimeout: Not confirmed in time.
            UnroutableError: Returned by the broker.
            PublishError: Refused, or failed more than `max_retries` times.
        """
        exchange = message.exchange
        declare = message.declare
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + timeout
        failures = 0
        if failed is not None:
            failures = 1
            await self._before_retry(failed, failures, exchange)
        get_channel = self._channel if channel_of is None else channel_of
        deadlines = self._deadlines
        assert deadlines is not None, "engine not started"
        while True:
            watch = deadlines.watch(deadline)
            try:
                try:
                    channel = await get_channel()
                    if declare is not None and declare.name and declare.name not in self._declared:
                        await declare_topology(channel, Topology(exchanges=(declare,)))
                        self._declared.add(declare.name)
                    confirm = await self.calls.publish(channel, message)
                finally:
                    deadlines.forget(watch)
            except asyncio.CancelledError:
                if not watch.timed_out():
                    raise
                raise self.timeout_error(message, timeout) from None
            except REFUSALS as exc:
                raise refused(exc, exchange, message.routing_key) from None
            except RETRYABLE as exc:
                failures += 1
                await self._before_retry(exc, failures, exchange)
                continue
            check_confirm(confirm, exchange)
            return

    def timeout_error(self, message: Outgoing, timeout: float) -> PublishTimeout:
        """The error of a publish not confirmed within `timeout` seconds."""
        state = "" if self.connected.is_set() else f" (not connected to {self.shown_uri})"
        return PublishTimeout(
            f"publish to exchange {message.exchange!r} with routing key "
            f"{message.routing_key!r} not confirmed within {timeout:g}s{state}"
        )

    async def _before_retry(self, exc: BaseException, failures: int, exchange: str) -> None:
        """Raise if a publish that failed `failures` times (the last with `exc`) must not
        be retried; else wait a little before the next try."""
        if self.closing or not self.options.retry or failures > self.options.max_retries:
            raise PublishError(
                f"publish to exchange {exchange!r} failed: {describe(exc)}"
            ) from None
        logger.info(
            "publish to exchange %r interrupted (%s); retrying (%d/%d)",
            exchange, describe(exc), failures, self.options.max_retries,
        )  # fmt: skip
        await asyncio.sleep(min(0.05 * failures, 1.0))

    def start_publish(
        self, channel: aiormq.abc.AbstractChannel | None, message: Outgoing, timeout: float
    ) -> tuple[asyncio.Future[Any], PublishWatch] | None:
        """Start a publish on `channel` with no task, when nothing must be awaited before
        its frames are queued (the channel is open, its exchange declared).

        Returns the future of the broker's confirm and the watch of its deadline (to
        `forget()` once it is done), or None when `publish()` must do it. Called on the
        engine loop, outside its coroutines (trio's tasks do, through `call_in_step()`).
        """
        if channel is None or channel.is_closed:
            return None
        declare = message.declare
        if declare is not None and declare.name and declare.name not in self._declared:
            return None
        deadlines = self._deadlines
        assert deadlines is not None, "engine not started"
        confirm = self.calls.start_publish(channel, message)
        if confirm is None:
            return None
        return confirm, deadlines.watch(deadlines.now() + timeout, confirm)

    def forget(self, watch: PublishWatch) -> None:
        """Drop the deadline of a publish started by `start_publish()`."""
        assert self._deadlines is not None, "engine not started"
        self._deadlines.forget(watch)

    async def add_consumer(self, consumer: SupervisedConsumer) -> None:
        """Start `consumer` and keep it running until it is closed."""
        self.consumers.add(consumer)
        try:
            await consumer.start()
        except BaseException:
            self.consumers.discard(consumer)
            raise

    async def close(self) -> None:
        """Close consumers, the connection, and stop supervising."""
        self.closing = True
        for consumer in list(self.consumers):
            await consumer.close()
        for reply_channel in list(self.reply_channels):
            await reply_channel.close()
        if self._connected is not None:
            self._connected.set()  # wakes whoever waits for a connection: they see `closing`
        connection = self.connection
        if connection is not None:
            await close_quietly(connection)
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        if self._deadlines is not None:
            self._deadlines.close()
        logger.debug("connection to %s closed", self.shown_uri)
