"""`amqp://` and `amqps://`: RabbitMQ through aiormq, on either anyio backend.

All aiormq calls happen in `_Engine`, plain asyncio code that runs on one asyncio loop:

* on the asyncio backend, the service's own loop (`_InlineHost`): calls are awaited
  directly and deliveries go straight into the consumer's stream;
* on the trio backend, a loop in trio's own thread, driven by a trio task
  (`TrioDriver`, see `_driven`): calls are asyncio tasks whose results resume the trio
  caller directly (a publish on an open channel needs none: it queues its frames and
  waits for its confirm's future), and deliveries go straight into the consumer's
  stream, with no thread crossing;
* for plain scripts (and blocking code with no runtime), a loop of its own in a daemon
  thread owned by the connection (`_ThreadHost`): calls cross through the loops'
  handles, deliveries cross back in batches through the consumer's `Handoff` (one
  wake-up per burst), and acks cross in batches too (`_ChannelSettler`).

trio-asyncio is not used: it was about 3x slower and patches asyncio globally.

Supervision lives in the engine: the connection is re-opened with capped exponential
backoff whenever it drops; each consumer re-opens its channel, redeclares its
exchanges, queues and bindings and consumes again (also after the broker cancelled it,
e.g. because its queue was deleted); publishes wait for the connection within their
timeout and are retried after a connection loss. Every step is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiormq
import aiormq.abc
import aiormq.connection
import anyio
import trio
from pamqp import commands as spec

from farine._broker.aiormq.fastpath import channel as _lean
from farine._broker.aiormq.fastpath.driven import (
    DrivenLoop,
    HeldWrites,
    TrioDriver,
    run_blocking_on,
)
from farine._broker.aiormq.fastpath.reader import READ_SIZE, read_leanly
from farine._broker.aiormq.fastpath.reader import install as install_reader
from farine._broker.errors import BrokerUnavailable, PublishError, PublishTimeout, UnroutableError
from farine._broker.interface import (
    BACKOFF,
    DIRECT_REPLY_TO,
    NO_ACK,
    Connection,
    ConnectionOptions,
    Consumer,
    ExchangeSpec,
    ReplyChannel,
    Topology,
)
from farine._broker.message import Message, Outcome, Properties
from farine._loop import (
    Handoff,
    LoopHandle,
    Reply,
    defer_wakes_on,
    stop_deferring_wakes,
    wait_future,
)
from farine._redact import redact
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine

__all__ = ("AmqpConnection", "open_amqp", "open_amqp_blocking")

logger = logging.getLogger("farine.amqp")

T = TypeVar("T")

#: Channel errors that mean the declaration itself is wrong (not a passing outage).
_DECLARATION_ERRORS: Final = (
    aiormq.ChannelNotFoundEntity,
    aiormq.ChannelPreconditionFailed,
    aiormq.ChannelAccessRefused,
    aiormq.ChannelLockedResource,
)

#: Errors after which a publish is worth retrying on a new connection or channel.
_RETRYABLE: Final = (
    aiormq.AMQPConnectionError,
    aiormq.ChannelInvalidStateError,
    aiormq.ChannelClosed,
    ConnectionError,
    RuntimeError,  # aiormq raises it for a channel requested on a closed connection
)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}" if str(exc) else text)


def _connection_url(uri: str, options: ConnectionOptions) -> str:
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", str(options.heartbeat))
    query.setdefault("name", options.name)
    return urlunsplit(parts._replace(query=urlencode(query)))


class _TcpTransportFactory(aiormq.connection.TCPTransportFactory):
    """aiormq's plain TCP connection, reading `READ_SIZE` bytes at a time, its frames
    read by a `FrameReader`; on the trio backend, its writes are gathered
    (`HeldWrites`).

    asyncio's socket transports read 256 KiB at a time: a buffer that large is mapped,
    shrunk to what was read and unmapped again, three more system calls for every read;
    measured here, about a tenth of the CPU time of a short RPC call. 64 KiB comes from
    the heap, and still takes many frames at once.
    """

    #: The writer of the connection it opened (the last one).
    writer: asyncio.StreamWriter | None = None

    async def create(
        self, url: Any, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await super().create(url, **kwargs)
        self.writer = writer
        if install_reader():
            read_leanly(reader)
        transport: Any = writer.transport
        if hasattr(transport, "max_size"):  # asyncio's socket transports
            transport.max_size = READ_SIZE
        loop = asyncio.get_running_loop()
        if isinstance(loop, DrivenLoop):  # the trio backend
            HeldWrites(writer, loop)
        return reader, writer


async def _declare(channel: aiormq.abc.AbstractChannel, topology: Topology) -> None:
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


async def _close_quietly(
    closable: aiormq.abc.AbstractChannel | aiormq.abc.AbstractConnection,
) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closable.close(), 5)


#: A publish deadline counts as passed this close to it (the loop may run a timer a
#: clock tick early).
_DEADLINE_SLACK: Final = 0.001


class _Watch:
    """The deadline of one publish (see `_Deadlines`): what it cancels at the deadline
    is the task of the publish, or the future of its confirm (`_Engine.publish_now()`)."""

    __slots__ = ("cancelling", "deadline", "fired", "target")

    def __init__(self, target: asyncio.Future[Any], deadline: float) -> None:
        self.target = target
        self.deadline = deadline
        self.cancelling = target.cancelling() if isinstance(target, asyncio.Task) else 0
        self.fired = False

    def timed_out(self) -> bool:
        """On `CancelledError`: True when the deadline caused it (it is then absorbed).

        A cancellation from elsewhere, alone or with the deadline's, stays a cancellation.
        """
        if not self.fired:
            return False
        target = self.target
        return not isinstance(target, asyncio.Task) or target.uncancel() <= self.cancelling


class _Deadlines:
    """Deadlines of the publishes waiting on the engine loop, kept by one timer.

    `asyncio.timeout_at()` costs a timer of its own per publish, pushed onto and later
    removed from the loop's heap; with many publishes in flight that was a measurable
    share of a call. Here a publish only registers its task, and one timer, set for the
    earliest deadline, cancels the tasks whose deadline passed (`_Watch.timed_out()`
    then tells the publish it timed out, as `asyncio.timeout` does). Publishes made with
    the same timeout end in the order they began, so the timer rarely moves.
    (`farine._deadlines.Deadlines` does the same with an anyio task; the engine runs
    plain asyncio code, on a loop that trio drives on the trio backend.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watches: set[_Watch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._next = float("inf")

    def watch(self, deadline: float, target: asyncio.Future[Any] | None = None) -> _Watch:
        """Cancel `target` (default: the current task) at `deadline` unless `forget()`
        is called first."""
        if target is None:
            target = asyncio.current_task()
            assert target is not None, "publishes run in asyncio tasks"
        watch = _Watch(target, deadline)
        self._watches.add(watch)
        if deadline < self._next:
            self._arm(deadline)
        return watch

    def forget(self, watch: _Watch) -> None:
        self._watches.discard(watch)

    def now(self) -> float:
        """The loop's clock, which deadlines are on."""
        return self._loop.time()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._next = float("inf")

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._next = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._next = float("inf")
        now = self._loop.time() + _DEADLINE_SLACK
        earliest = float("inf")
        for watch in list(self._watches):
            if watch.deadline <= now:
                self._watches.discard(watch)
                watch.fired = True
                watch.target.cancel()
            elif watch.deadline < earliest:
                earliest = watch.deadline
        if earliest != float("inf"):
            self._arm(earliest)


def _refused(exc: BaseException, exchange: str, routing_key: str) -> PublishError:
    """The error of a publish the broker returned (`aiormq.PublishError`) or refused
    because its exchange does not exist (`aiormq.ChannelNotFoundEntity`)."""
    if isinstance(exc, aiormq.PublishError):
        return UnroutableError(
            f"unroutable message: no queue is bound to exchange {exchange!r} "
            f"with routing key {routing_key!r}"
        )
    return PublishError(f"cannot publish to exchange {exchange!r}: {_describe(exc)}")


def _check_confirm(confirm: object, exchange: str) -> None:
    """Raise if the broker's answer to a publish is a nack."""
    if isinstance(confirm, spec.Basic.Nack):
        raise PublishError(f"the broker refused the message (nack) on exchange {exchange!r}")


#: How often, at first, acks from other threads are flushed while messages are in flight;
#: the interval doubles, up to the cap, while there is nothing to flush.
ACK_FLUSH_INTERVAL: Final = (0.001, 0.01)


#: A frame that settles deliveries: outcome, delivery tag, `multiple`, `requeue`.
_SettleFrame = tuple[Outcome, int, bool, bool]


def _settle_frames(
    batch: list[tuple[int, Outcome, bool]], oldest: int | None
) -> list[_SettleFrame]:
    """The frames that settle `batch`, in order, `oldest` being the oldest delivery tag
    still in flight.

    Acks of tags older than every delivery still in flight go as one frame, sent after
    the nacks and rejects so that it can never cover one of those.
    """
    frames: list[_SettleFrame] = []
    covered = 0
    for tag, outcome, requeue in batch:
        if outcome == "ack":
            if oldest is None or tag < oldest:
                covered = max(covered, tag)
            else:
                frames.append(("ack", tag, False, False))
        else:
            frames.append((outcome, tag, False, requeue))
    if covered:
        frames.append(("ack", covered, True, False))
    return frames


class _ChannelSettler:
    """Acks, nacks and rejects of one consumer channel, sent in batches.

    `settle()` may be called from any thread (a `def` handler's worker thread, the trio
    loop). Waking the engine loop from another thread costs a system call and a GIL
    hand-off, about as much as the ack itself; so while other messages are still being
    handled, settles from other threads wake nobody: they ride along with the next
    wake-up of the engine loop (a publish, another settle) or, at the latest, a timer on
    it flushes them (every millisecond while there is traffic, backing off when there
    is none; only once settles came from another thread). The settle of the last
    message in flight wakes the loop at once: nothing else would carry it soon, and the
    broker may be waiting for it (to deliver more within the prefetch window, or to
    confirm a persistent message to its publisher: RabbitMQ confirms one that was acked
    without writing it to disk). Settles made on the engine loop are flushed once its
    ready callbacks have run.

    Each frame is a system call too: acks of the oldest deliveries of the channel go as
    one `basic.ack` with `multiple` set (valid as long as no older delivery is still
    unsettled: the set of tags in flight, bounded by the prefetch count, tells). A
    flush queues its frames itself (`_lean.settle()`), unless frames of an earlier flush
    still wait for a task to send them their own way: then they follow, in order.
    """

    def __init__(
        self, channel: aiormq.abc.AbstractChannel, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.channel = channel
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._inbox = LoopHandle.of_asyncio_loop(loop, self._loop_thread)
        self._lock = threading.Lock()
        self._pending: list[tuple[int, Outcome, bool]] = []
        self._scheduled = False
        self._riding = False
        self._unsettled = 0
        self._polling = False
        self._off_loop = False  # a settle came from another thread
        self._interval = ACK_FLUSH_INTERVAL[0]
        # Engine loop only: tags delivered and not settled yet; the frames of flushes
        # waiting to be written; the one task writing them, in order (a `multiple` ack
        # must not overtake an older nack).
        self._in_flight: set[int] = set()
        self._outbox: deque[list[_SettleFrame]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self.lost = False

    @property
    def alive(self) -> bool:
        return not self.lost and not self.channel.is_closed

    def delivered(self, delivery_tag: int) -> None:
        """Count a delivery (on the engine loop) and make sure the flush timer runs.

        The timer only serves settles from other threads: until one came, none runs
        (settles on the engine loop are flushed once its ready callbacks have run).
        """
        self._in_flight.add(delivery_tag)
        with self._lock:
            self._unsettled += 1
            if self._polling or not self._off_loop:
                return
            self._polling = True
            self._interval = ACK_FLUSH_INTERVAL[0]
        self._loop.call_later(self._interval, self._tick)

    def settle(self, delivery_tag: int, outcome: Outcome, requeue: bool) -> None:
        on_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            self._pending.append((delivery_tag, outcome, requeue))
            self._unsettled -= 1
            if not on_loop:
                self._off_loop = True  # from the next delivery on, the timer runs
            if self._scheduled:
                return
            if self._polling and not on_loop and self._unsettled > 0:
                if self._riding:
                    return
                self._riding = True
                lazily = True
            else:
                self._scheduled = True
                lazily = False
        if on_loop:
            self._loop.call_soon(self._flush)
        elif lazily:
            self._inbox.call_soon_lazily(self._flush)
        elif not self._inbox.call_soon(self._flush):
            # The engine loop is closed: the broker requeues on its own.
            logger.debug("engine loop closed; %s of tag %d dropped", outcome, delivery_tag)

    def _tick(self) -> None:
        flushed = self._flush()
        with self._lock:
            if not self._in_flight or self.lost or self.channel.is_closed:
                self._polling = False
                return
            low, high = ACK_FLUSH_INTERVAL
            self._interval = low if flushed else min(self._interval * 2, high)
        self._loop.call_later(self._interval, self._tick)

    def _flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, []
            self._scheduled = self._riding = False
        if not batch:
            return 0
        in_flight = self._in_flight
        for tag, _, _ in batch:
            in_flight.discard(tag)
        if self.channel.is_closed:
            logger.info(
                "channel closed: %d ack(s)/nack(s) dropped; the broker redelivers those messages",
                len(batch),
            )
            return len(batch)
        frames = _settle_frames(batch, min(in_flight, default=None))
        if self._sender is None:
            if _lean.settle(self.channel, frames):
                return len(batch)
            self._sender = self._loop.create_task(self._send_all())
        self._outbox.append(frames)
        return len(batch)

    async def _send_all(self) -> None:
        try:
            while self._outbox:
                await self._send(self._outbox.popleft())
        finally:
            self._sender = None

    async def _send(self, frames: list[_SettleFrame]) -> None:
        channel = self.channel
        try:
            for outcome, tag, multiple, requeue in frames:
                if outcome == "ack":
                    await channel.basic_ack(tag, multiple=multiple, wait=False)
                elif outcome == "nack":
                    await channel.basic_nack(tag, requeue=requeue, wait=False)
                else:
                    await channel.basic_reject(tag, requeue=requeue, wait=False)
        except Exception as exc:
            logger.info(
                "could not settle messages (%s); the broker redelivers them", _describe(exc)
            )

    async def drain(self) -> None:
        """Send what is queued now and wait until it is written."""
        self._flush()
        while self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)


class _EngineConsumer:
    """One consumer: its channel, re-opened and re-declared whenever it is lost."""

    def __init__(
        self,
        engine: _Engine,
        queue: str,
        prefetch: int,
        topology: Topology,
        push: Callable[[Message], None],
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.prefetch = prefetch
        self.topology = topology
        self.push = push
        self.settler: _ChannelSettler | None = None
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.consumer_tag: str | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.attachments = 0

    async def start(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run(ready))
        try:
            await ready
        except BaseException:
            self._stop.set()
            await self._finish_task()
            raise

    async def _attach(
        self, connection: aiormq.abc.AbstractConnection
    ) -> tuple[aiormq.abc.AbstractChannel, asyncio.Event, _ChannelSettler]:
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.basic_qos(prefetch_count=self.prefetch)
            await _declare(channel, self.topology)
            cancelled = asyncio.Event()

            def on_cancel(_: spec.Basic.Cancel) -> None:
                cancelled.set()

            channel.on_consumer_cancel_callbacks.add(on_cancel)
            settler = _ChannelSettler(channel, asyncio.get_running_loop())

            def on_message(delivered: aiormq.abc.DeliveredMessage) -> None:
                delivery = delivered.delivery
                assert isinstance(delivery, spec.Basic.Deliver)
                settler.delivered(delivery.delivery_tag or 0)
                self.push(
                    Message(
                        delivered.body,
                        delivery_tag=delivery.delivery_tag or 0,
                        exchange=delivery.exchange or "",
                        routing_key=delivery.routing_key or "",
                        redelivered=bool(delivery.redelivered),
                        properties=delivered.header.properties,
                        settler=settler,
                        consumer_tag=delivery.consumer_tag or "",
                    )
                )

            callback = _lean.deliver_inline(channel, on_message)
            ok = await channel.basic_consume(self.queue, callback, no_ack=False)
        except BaseException:
            await _close_quietly(channel)
            raise
        self.consumer_tag = ok.consumer_tag
        return channel, cancelled, settler

    async def _run(self, ready: asyncio.Future[None]) -> None:
        initial, factor, cap = BACKOFF
        delay = initial
        while not self._stop.is_set():
            connection = await self.engine.wait_connection(self._stop)
            if connection is None:
                break
            try:
                channel, cancelled, settler = await self._attach(connection)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done() and isinstance(exc, _DECLARATION_ERRORS):
                    ready.set_exception(
                        ConfigurationError(
                            f"cannot consume from queue {self.queue!r}: {_describe(exc)}"
                        )
                    )
                    return
                logger.warning(
                    "consumer of queue %s: cannot attach (%s); retrying in %.1fs",
                    self.queue, _describe(exc), delay,
                )  # fmt: skip
                await self._pause(delay)
                delay = min(delay * factor, cap)
                continue
            self.channel, self.settler = channel, settler
            self.attachments += 1
            if not ready.done():
                ready.set_result(None)
                logger.debug("consuming from queue %s on channel %s", self.queue, channel.number)
            else:
                logger.info("consumer of queue %s resumed", self.queue)
            reason = await self._watch(channel, cancelled)
            if self._stop.is_set():
                return
            settler.lost = True
            logger.warning("consumer of queue %s lost (%s); re-attaching", self.queue, reason)
            await _close_quietly(channel)
            if cancelled.is_set():
                # The queue was deleted under us: redeclare at once, then back off if it
                # keeps happening.
                await self._pause(delay)
                delay = min(delay * factor, cap)
            else:
                delay = initial

    async def _watch(self, channel: aiormq.abc.AbstractChannel, cancelled: asyncio.Event) -> str:
        closing = cast("asyncio.Future[Any]", channel.closing)  # pyright: ignore[reportUnknownMemberType]
        waiters = [
            asyncio.ensure_future(cancelled.wait()),
            asyncio.ensure_future(self._stop.wait()),
        ]
        try:
            await asyncio.wait([closing, *waiters], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if cancelled.is_set():
            return "cancelled by the broker: its queue was deleted?"
        if closing.done():
            return "channel closed: " + _describe(
                None if closing.cancelled() else closing.exception()
            )
        closing.cancel()
        return "stopped"

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def cancel(self) -> None:
        """Stop deliveries at the broker; the channel stays open for the last acks."""
        self._stop.set()
        await self._finish_task()
        channel, tag = self.channel, self.consumer_tag
        if channel is not None and tag is not None and not channel.is_closed:
            try:
                await asyncio.wait_for(channel.basic_cancel(tag), 10)
            except Exception as exc:
                logger.debug("basic_cancel on queue %s failed: %s", self.queue, _describe(exc))

    async def close(self) -> None:
        """Cancel, send the last acks, close the channel (unacked messages are requeued)."""
        await self.cancel()
        if self.settler is not None:
            await self.settler.drain()
            self.settler.lost = True
        if self.channel is not None:
            await _close_quietly(self.channel)
        self.engine.consumers.discard(self)

    async def _finish_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)


class _EngineReplyChannel:
    """Direct reply-to on the engine loop: a confirm channel consuming the replies no-ack.

    Opened by the first publish, and opened again by the next publish after it is lost
    (replies to what was published on the lost channel cannot arrive: `lost` is called).
    """

    def __init__(
        self, engine: _Engine, push: Callable[[Message], None], lost: Callable[[], None]
    ) -> None:
        self.engine = engine
        self.push = push
        self.lost = lost
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.closed = False
        self._lock = asyncio.Lock()

    async def get(self) -> aiormq.abc.AbstractChannel:
        """Return the open channel, opening one (and its reply consumer) if needed."""
        channel = self.channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            channel = self.channel
            if channel is not None and not channel.is_closed:
                return channel
            if self.closed:
                raise PublishError("the reply channel is closed")
            connection = await self.engine.wait_connection()
            if connection is None:
                raise PublishError("the connection is closed")
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                callback = _lean.deliver_inline(channel, self._on_message)
                await channel.basic_consume(DIRECT_REPLY_TO, callback, no_ack=True)
            except BaseException:
                await _close_quietly(channel)
                raise
            closing = cast("asyncio.Future[Any]", channel.closing)  # pyright: ignore[reportUnknownMemberType]
            closing.add_done_callback(self._on_closed)
            self.channel = channel
            return channel

    def _on_message(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        delivery = delivered.delivery
        assert isinstance(delivery, spec.Basic.Deliver)
        self.push(
            Message(
                delivered.body,
                delivery_tag=delivery.delivery_tag or 0,
                exchange=delivery.exchange or "",
                routing_key=delivery.routing_key or "",
                redelivered=False,
                properties=delivered.header.properties,
                settler=NO_ACK,
                consumer_tag=delivery.consumer_tag or "",
            )
        )

    def _on_closed(self, _: asyncio.Future[Any]) -> None:
        if not self.closed and not self.engine.closing:
            logger.info("reply channel lost; replies on their way to it are lost")
            self.lost()

    async def close(self) -> None:
        self.closed = True
        self.engine.reply_channels.discard(self)
        if self.channel is not None:
            await _close_quietly(self.channel)


class _Engine:
    """The aiormq side: connection, supervision, publishing. Runs on one asyncio loop."""

    def __init__(self, uri: str, options: ConnectionOptions) -> None:
        self.uri = uri
        self.shown_uri = redact(uri)
        self.options = options
        self.url = _connection_url(uri, options)
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.consumers: set[_EngineConsumer] = set()
        self.reply_channels: set[_EngineReplyChannel] = set()
        self.generation = 0
        self.closing = False
        self._connected: asyncio.Event | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._publish_channel: aiormq.abc.AbstractChannel | None = None
        self._publish_lock: asyncio.Lock | None = None
        self._declared: set[str] = set()
        self._deadlines: _Deadlines | None = None

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
        self._deadlines = _Deadlines(loop)
        first: asyncio.Future[None] = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(first))
        try:
            await first
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> aiormq.abc.AbstractConnection:
        properties: dict[str, Any] = {"connection_name": self.options.name, "product": "farine"}
        properties.update(self.options.client_properties)
        tls = urlsplit(self.url).scheme == "amqps"  # aiormq opens TLS itself
        factory = _TcpTransportFactory()
        connection = await asyncio.wait_for(
            aiormq.connect(  # pyright: ignore[reportUnknownMemberType]
                self.url,
                client_properties=properties,  # pyright: ignore[reportArgumentType]
                **({} if tls else {"transport_factory": factory}),
            ),
            self.options.connect_timeout or None,
        )
        if factory.writer is not None:
            _lean.write_directly(connection, factory.writer)
        return connection

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
                reason = _describe(exc)
                if not first.done():
                    elapsed = loop.time() - started
                    limit = self.options.connect_retry_timeout
                    if elapsed + delay > limit:
                        first.set_exception(
                            BrokerUnavailable(
                                f"cannot connect to the AMQP broker at {self.shown_uri}: "
                                f"{reason} ({attempts} attempt(s) in {elapsed:.1f}s; "
                                f"connect_retry_timeout = {limit:g}s)"
                            )
                        )
                        return
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
            reason = _describe(None if closing.cancelled() else closing.exception())
            logger.warning("connection to %s lost (%s); reconnecting", self.shown_uri, reason)

    async def wait_connection(
        self, stop: asyncio.Event | None = None
    ) -> aiormq.abc.AbstractConnection | None:
        """Return an open connection, waiting for one; None once closing or `stop` is set."""
        while not self.closing and not (stop is not None and stop.is_set()):
            connection = self.connection
            if self.connected.is_set() and connection is not None and not connection.is_closed:
                return connection
            if connection is not None and connection.is_closed:
                # The supervisor has not noticed yet; it sets the event again once reconnected.
                self.connected.clear()
            waiters = [asyncio.ensure_future(self.connected.wait())]
            if stop is not None:
                waiters.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return None

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
                _lean.read_inline(channel)
                self._publish_channel = channel
                self._declared.clear()
            return channel

    async def declare(self, topology: Topology) -> None:
        """Declare `topology` on the publishing channel."""
        channel = await self._channel()
        await _declare(channel, topology)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        mandatory: bool,
        timeout: float,  # noqa: ASYNC109  # enforced on the engine loop, maybe another thread
        declare: ExchangeSpec | None,
        channel_of: Callable[[], Awaitable[aiormq.abc.AbstractChannel]] | None = None,
        failed: BaseException | None = None,
        deadline: float | None = None,
    ) -> None:
        """Publish and wait for the confirm, waiting out and retrying connection losses.

        `channel_of` returns the channel to publish on (default: the publishing channel).
        `failed` is the error of a first try (by `publish_now()`), to count and retry
        within the same `deadline` (on the loop's clock; default: in `timeout` seconds).
        """
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
                        await _declare(channel, Topology(exchanges=(declare,)))
                        self._declared.add(declare.name)
                    confirm = await _lean.publish(
                        channel, body, exchange, routing_key, properties, mandatory
                    )
                finally:
                    deadlines.forget(watch)
            except asyncio.CancelledError:
                if not watch.timed_out():
                    raise
                raise self.timeout_error(exchange, routing_key, timeout) from None
            except (aiormq.PublishError, aiormq.ChannelNotFoundEntity) as exc:
                raise _refused(exc, exchange, routing_key) from None
            except _RETRYABLE as exc:
                failures += 1
                await self._before_retry(exc, failures, exchange)
                continue
            _check_confirm(confirm, exchange)
            return

    def timeout_error(self, exchange: str, routing_key: str, timeout: float) -> PublishTimeout:
        """The error of a publish not confirmed within `timeout` seconds."""
        state = "" if self.connected.is_set() else f" (not connected to {self.shown_uri})"
        return PublishTimeout(
            f"publish to exchange {exchange!r} with routing key {routing_key!r} "
            f"not confirmed within {timeout:g}s{state}"
        )

    async def _before_retry(self, exc: BaseException, failures: int, exchange: str) -> None:
        """Raise if a publish that failed `failures` times (the last with `exc`) must not
        be retried; else wait a little before the next try."""
        if self.closing or not self.options.retry or failures > self.options.max_retries:
            raise PublishError(
                f"publish to exchange {exchange!r} failed: {_describe(exc)}"
            ) from None
        logger.info(
            "publish to exchange %r interrupted (%s); retrying (%d/%d)",
            exchange, _describe(exc), failures, self.options.max_retries,
        )  # fmt: skip
        await asyncio.sleep(min(0.05 * failures, 1.0))

    def publish_now(
        self,
        channel: aiormq.abc.AbstractChannel | None,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        mandatory: bool,
        timeout: float,
        declare: ExchangeSpec | None,
    ) -> tuple[asyncio.Future[Any], _Watch] | None:
        """Start a publish on `channel` with no task, when nothing must be awaited before
        its frames are queued (the channel is open, its exchange declared).

        Returns the future of the broker's confirm and the watch of its deadline (to
        `forget()` once it is done), or None when `publish()` must do it. Called on the
        engine loop, outside its coroutines (trio's tasks do, through `call_now()`).
        """
        if channel is None or channel.is_closed:
            return None
        if declare is not None and declare.name and declare.name not in self._declared:
            return None
        deadlines = self._deadlines
        assert deadlines is not None, "engine not started"
        confirm = _lean.publish_now(channel, body, exchange, routing_key, properties, mandatory)
        if confirm is None:
            return None
        return confirm, deadlines.watch(deadlines.now() + timeout, confirm)

    def forget(self, watch: _Watch) -> None:
        """Drop the deadline of a publish started by `publish_now()`."""
        assert self._deadlines is not None, "engine not started"
        self._deadlines.forget(watch)

    async def add_consumer(self, consumer: _EngineConsumer) -> None:
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
            await _close_quietly(connection)
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        if self._deadlines is not None:
            self._deadlines.close()
        logger.debug("connection to %s closed", self.shown_uri)


class _InlineHost:
    """The asyncio backend: the engine runs on the service's own loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread_id = threading.get_ident()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await coro

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return run_blocking_on(self.loop, self.thread_id, coro, timeout)

    async def stop(self) -> None:
        await anyio.lowlevel.checkpoint()


class _ThreadHost:
    """Plain scripts, blocking code: the engine runs on its own loop in a thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=f"farine-amqp-{name}", daemon=True)
        self._thread.start()
        self.thread_id = self._thread.ident or 0
        self.inbox = LoopHandle.of_asyncio_loop(self.loop, self.thread_id)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        defer_wakes_on(self.loop)
        try:
            self.loop.run_forever()
        finally:
            stop_deferring_wakes()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not trio.lowlevel.in_trio_task():
            # An asyncio caller (a script's own loop, no runtime): the plain way.
            return await wait_future(asyncio.run_coroutine_threadsafe(coro, self.loop))
        # From trio, the call crosses through the loops' handles instead: one wake-up of
        # each side per burst (not a self-pipe write per call plus a trio token call per
        # result), and no concurrent.futures.Future to chain.
        call = _CrossCall(coro, Reply[T]())
        if not self.inbox.call_soon(call.start):
            coro.close()
            raise PublishError("the AMQP connection's thread has stopped")
        return await call.reply.wait(functools.partial(self.inbox.call_soon, call.cancel))

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if threading.get_ident() == self.thread_id:
            coro.close()
            raise RuntimeError("a blocking publish was called on the AMQP engine's thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop_blocking(self) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.stop_blocking)


#: Where the engine runs: the service's asyncio loop, a loop driven by the service's
#: trio run, or a loop in a thread of its own.
_Host = _InlineHost | TrioDriver | _ThreadHost


class _CrossCall(Generic[T]):
    """A coroutine run on the engine loop for a trio task (see `_ThreadHost.run`)."""

    __slots__ = ("coro", "reply", "task")

    def __init__(self, coro: Coroutine[Any, Any, T], reply: Reply[T]) -> None:
        self.coro = coro
        self.reply = reply
        self.task: asyncio.Task[T] | None = None

    def start(self) -> None:
        """Start the coroutine (on the engine loop)."""
        self.task = asyncio.get_running_loop().create_task(self.coro)
        self.task.add_done_callback(self._finish)

    def cancel(self) -> None:
        """Cancel it (on the engine loop; `start` ran before: same queue, in order)."""
        if self.task is not None:
            self.task.cancel()

    def _finish(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            # Cancelled for the caller (who no longer waits), or by the loop stopping.
            self.reply.throw(PublishError("the AMQP connection is closed"))
            return
        exc = task.exception()
        if exc is not None:
            self.reply.throw(exc)
        else:
            self.reply.send(task.result())


class _AmqpConsumer(Consumer):
    def __init__(self, queue: str, prefetch: int, host: _Host) -> None:
        super().__init__(queue, prefetch)
        self._host = host
        self.handoff = Handoff[Message](LoopHandle.current(), self.deliveries.put)
        self.engine_consumer: _EngineConsumer | None = None

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
    def __init__(self, engine_channel: _EngineReplyChannel, connection: AmqpConnection) -> None:
        self._engine_channel = engine_channel
        self._connection = connection

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109  # also bounds the wait for a reconnection; raises PublishTimeout
        declare: ExchangeSpec | None = None,
    ) -> None:
        connection = self._connection
        engine_channel = self._engine_channel
        if connection.closed or engine_channel.closed:
            raise PublishError("the reply channel is closed")
        await connection._publish(  # pyright: ignore[reportPrivateUsage]
            exchange, routing_key, body, properties, mandatory, timeout, declare,
            engine_channel.channel, engine_channel.get,
        )  # fmt: skip

    async def aclose(self) -> None:
        if self._connection.closed:
            return
        await self._connection._host.run(self._engine_channel.close())  # pyright: ignore[reportPrivateUsage]


class AmqpConnection(Connection):
    """A supervised connection to RabbitMQ (see the module docstring)."""

    kind = "amqp"

    def __init__(self, uri: str, options: ConnectionOptions, engine: _Engine, host: _Host) -> None:
        super().__init__(uri, options)
        self._engine = engine
        self._host = host
        # On the service's own asyncio loop, calls are awaited as they are: one
        # coroutine frame less to go through at each step of a publish.
        self._inline = isinstance(host, _InlineHost)
        self._driver = host if isinstance(host, TrioDriver) else None

    def _run(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """`coro` to await from the caller's task (see the hosts)."""
        return coro if self._inline else self._host.run(coro)

    @property
    def connected(self) -> bool:
        """True while the connection to the broker is up."""
        return self._engine.connected.is_set()

    @property
    def generation(self) -> int:
        """How many times the connection was opened (1 + reconnections)."""
        return self._engine.generation

    async def declare(self, topology: Topology) -> None:
        await self._host.run(self._engine.declare(topology))

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109  # also bounds the wait for a reconnection; raises PublishTimeout
        declare: ExchangeSpec | None = None,
    ) -> None:
        if self.closed:
            raise PublishError("the connection is closed")
        await self._publish(
            exchange, routing_key, body, properties, mandatory, timeout, declare,
            self._engine.publish_channel, None,
        )  # fmt: skip

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        mandatory: bool,
        timeout: float | None,  # noqa: ASYNC109  # enforced by the engine
        declare: ExchangeSpec | None,
        channel: aiormq.abc.AbstractChannel | None,
        channel_of: Callable[[], Awaitable[aiormq.abc.AbstractChannel]] | None,
    ) -> None:
        """Publish on `channel`, the open channel of `channel_of` (if any yet).

        On trio, the publish starts with no asyncio task when it can
        (`_Engine.publish_now()`): creating and running one cost about 4% of a short
        RPC call's instructions. It takes `_Engine.publish()`'s way when something must
        be awaited first, and after a connection loss, which that way retries.
        """
        engine = self._engine
        limit = self.options.publish_timeout if timeout is None else timeout
        driver = self._driver
        failed: BaseException | None = None
        deadline: float | None = None
        if driver is not None:
            started = driver.call_now(
                engine.publish_now, channel, exchange, routing_key, body, properties,
                mandatory, limit, declare,
            )  # fmt: skip
            if started is not None:
                confirm, watch = started
                try:
                    # A caller cancelled cancels the confirm's future, as it would the task.
                    result = await driver.wait_future(confirm, confirm.cancel)
                except asyncio.CancelledError:
                    if watch.timed_out():
                        raise engine.timeout_error(exchange, routing_key, limit) from None
                    # As a publish task cancelled by the loop stopping.
                    raise PublishError("the AMQP connection is closed") from None
                except (aiormq.PublishError, aiormq.ChannelNotFoundEntity) as exc:
                    raise _refused(exc, exchange, routing_key) from None
                except _RETRYABLE as exc:
                    failed, deadline = exc, watch.deadline
                else:
                    _check_confirm(result, exchange)
                    return
                finally:
                    engine.forget(watch)
        publish = engine.publish(
            exchange, routing_key, body, properties, mandatory, limit, declare, channel_of,
            failed, deadline,
        )  # fmt: skip
        await self._run(publish)

    def publish_blocking(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
        timeout: float | None = None,
        declare: ExchangeSpec | None = None,
    ) -> None:
        if self.closed:
            raise PublishError("the connection is closed")
        limit = self.options.publish_timeout if timeout is None else timeout
        self._host.run_blocking(
            self._engine.publish(
                exchange, routing_key, body, properties, mandatory, limit, declare
            ),
            limit + 5,  # the engine enforces `limit`; this only guards against a stuck loop
        )

    async def consume(self, queue: str, *, prefetch: int, topology: Topology) -> Consumer:
        consumer = _AmqpConsumer(queue, prefetch, self._host)
        engine_consumer = _EngineConsumer(
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

        engine_channel = _EngineReplyChannel(self._engine, handoff.push, lost)

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
        if isinstance(self._host, _ThreadHost):
            self._host.stop_blocking()


def connection_name(prefix: str = "farine") -> str:
    """A unique connection name, so a connection can be told apart in the broker's list."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def open_amqp(uri: str, options: ConnectionOptions) -> AsyncGenerator[AmqpConnection]:
    """Open a supervised AMQP connection for the running event loop (asyncio or trio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        async with _open_on(_InlineHost(loop), uri, options) as connection:
            yield connection
        return
    # trio: the engine's loop runs in this thread, driven by a task of this run.
    driver = TrioDriver()
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.drive)
            try:
                async with _open_on(driver, uri, options) as connection:
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
    host: _Host, uri: str, options: ConnectionOptions
) -> AsyncGenerator[AmqpConnection]:
    engine = _Engine(uri, options)
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
    """Open a supervised AMQP connection on its own thread (for code with no event loop)."""
    host = _ThreadHost(options.name)
    engine = _Engine(uri, options)
    try:
        host.run_blocking(engine.start(), None)
    except BaseException:
        host.stop_blocking()
        raise
    return AmqpConnection(uri, options, engine, host)
