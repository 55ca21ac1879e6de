"""The transport interface: what the consumer and publisher code asks of a broker.

Two implementations live beside this module: `_memory` (the in-process broker) and
`_aiormq` (RabbitMQ through aiormq). Everything here is backend-neutral anyio code.
"""

from __future__ import annotations

import abc
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import anyio
import anyio.lowlevel

from farine._broker.loops import Wakeup, call_in_task

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from farine._broker.message import Message, Outcome, Properties

__all__ = (
    "DIRECT_REPLY_TO",
    "NO_ACK",
    "Binding",
    "Connection",
    "ConnectionOptions",
    "Consumer",
    "DeliveryQueue",
    "ExchangeSpec",
    "ExchangeType",
    "QueueSpec",
    "ReplyChannel",
    "Topology",
    "is_direct_reply_to",
)

logger = logging.getLogger("farine.amqp")

ExchangeType = Literal["direct", "topic", "fanout", "headers"]

#: RabbitMQ's direct reply-to pseudo-queue (the memory broker offers it too).
DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"


def is_direct_reply_to(address: str) -> bool:
    """True for `DIRECT_REPLY_TO` and the per-channel addresses the broker derives from it."""
    return address.startswith(DIRECT_REPLY_TO)


#: Reconnection backoff: first wait, growth factor, cap (seconds).
BACKOFF: Final = (0.1, 2.0, 10.0)


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange to declare."""

    name: str
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue to declare. `arguments` holds x-arguments (dead-letter exchange, TTL...)."""

    name: str
    durable: bool = True
    auto_delete: bool = False
    exclusive: bool = False
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Binding:
    """A binding of `queue` to `exchange` with `routing_key`."""

    queue: str
    exchange: str
    routing_key: str
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    """Exchanges, queues and bindings a consumer needs; redeclared after a reconnection."""

    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    bindings: tuple[Binding, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOptions:
    """How to connect and how long to wait (from the service settings).

    Attributes:
        heartbeat: AMQP heartbeat interval in seconds.
        connect_timeout: Seconds one connection attempt may take.
        connect_retry_timeout: Seconds to keep retrying the first connection.
        publish_timeout: Default seconds a publish may wait (connection + confirm).
        retry: Republish after a connection loss, within the publish timeout.
        max_retries: How many times a publish is retried at most.
        name: Connection name shown by the broker (`rabbitmqctl list_connections name`).
        fast_path: `auto`, `on` or `off`: whether AMQP connections take the fast path
            (see `farine._broker.aiormq.fastpath`).
        tls_ca: On `amqps://`, a PEM file of CA certificates (None: the system's).
        tls_cert: On `amqps://`, this client's certificate (PEM), or None.
        tls_key: The private key of `tls_cert` (None: in that file).
        tls_verify: On `amqps://`, verify the broker's certificate and host name.
    """

    heartbeat: int = 60
    connect_timeout: float = 10.0
    connect_retry_timeout: float = 10.0
    publish_timeout: float = 30.0
    retry: bool = True
    max_retries: int = 5
    name: str = "farine"
    fast_path: str = "auto"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    client_properties: dict[str, Any] = field(default_factory=dict[str, Any])


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where it goes, what it carries, how long to wait.

    Attributes:
        exchange: Exchange name (`""` is the default exchange).
        routing_key: Routing key.
        body: Encoded body.
        properties: AMQP properties.
        mandatory: Report a message no queue receives (`UnroutableError`).
        timeout: Seconds to wait for the connection and the confirm (default:
            `publish_timeout`).
        declare: Declare this exchange first (once per connection).

    Example:
        ```python
        await connection.publish(Outgoing("orders", "placed", b'{"id": 7}', Properties()))
        ```
    """

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    mandatory: bool = True
    timeout: float | None = None
    declare: ExchangeSpec | None = None


class TaskStarter(Protocol):
    """What starts the tasks that take a consumer's messages (`farine._takers.Takers`)."""

    def wants_task(self) -> bool:
        """True when a message that no task waits for needs a new task."""
        ...

    def wanted(self) -> None:
        """Start a task for a message that no task waits for (in a task of the loop)."""
        ...


class Consumer(abc.ABC):
    """Deliveries of one queue on one channel, received on the consumer's event loop."""

    def __init__(self, queue: str, prefetch: int) -> None:
        self.queue_name = queue
        self.deliveries = DeliveryQueue()

    def __aiter__(self) -> Consumer:
        return self

    def on_unclaimed(self, starter: TaskStarter | None) -> None:
        """Have `starter` start a task whenever messages arrive that no task waits for.

        `starter.wanted()` runs in a task of the consumer's event loop, at once if such
        messages wait already, when `starter.wants_task()` is true. None removes it.
        With it, a consumer needs no task waiting while idle.
        """
        self.deliveries.set_on_unclaimed(starter)

    async def __anext__(self) -> Message:
        try:
            return await self.deliveries.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def not_ready(self) -> str | None:
        """Why deliveries cannot flow now (reconnecting, blocked by the broker), or None."""
        return None

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop deliveries at the broker; messages received but not started are requeued."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Cancel and close the channel: messages still unacked go back to the queue."""


class _NoAck:
    """The settler of messages received without acks (direct reply-to): nothing to send."""

    __slots__ = ()

    @property
    def alive(self) -> bool:
        return True

    def settle(self, delivery_tag: int, outcome: Outcome, requeue: bool) -> None:
        return None


#: Settles the messages of a no-ack delivery (settling them is a no-op).
NO_ACK: Final = _NoAck()


class ReplyChannel(abc.ABC):
    """A channel that publishes requests and receives their replies by direct reply-to.

    A request published here with `reply_to=DIRECT_REPLY_TO` reaches its consumer with
    this channel's own address as `reply_to`. Replies published to that address
    (default exchange, *not* mandatory: RabbitMQ returns a mandatory message sent to it
    as unroutable even when it delivers it) come back here without acks, and are handed
    in order, in batches, to the `on_replies` callback on the event loop that opened
    the channel. No queue is declared and nothing is acked, so a reply costs the broker
    and the client less than one through a reply queue.

    When the channel is lost (connection loss, channel error), replies to the requests
    published on it can no longer arrive: `on_lost` is called on the same loop, and the
    next publish opens a new channel with a new address.
    """

    @abc.abstractmethod
    def publish(self, message: Outgoing) -> Awaitable[None]:
        """Publish a request: awaiting it waits for the broker's confirm (see
        `Connection.publish`)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the channel: replies still on their way are dropped."""


class Connection(abc.ABC):
    """One broker connection (memory or AMQP), shared by the services of a process."""

    #: `"memory"` or `"amqp"`.
    kind: str = ""

    def __init__(self, uri: str, options: ConnectionOptions) -> None:
        self.uri = uri
        self.options = options
        self.closed = False

    @property
    def name(self) -> str:
        """The connection name the broker shows."""
        return self.options.name

    @property
    def connected(self) -> bool:
        """True while the connection to the broker is up (always, in memory)."""
        return True

    @property
    def reconnects(self) -> int:
        """How many times the connection was opened again after a loss."""
        return 0

    async def blocked(self) -> bool:
        """True while the broker blocks the connection (`connection.blocked`: an alarm)."""
        return False

    @abc.abstractmethod
    async def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues and bindings now."""

    @abc.abstractmethod
    def publish(self, message: Outgoing) -> Awaitable[None]:
        """Publish `message`: awaiting it waits for the broker's confirm.

        Raises:
            UnroutableError: `message.mandatory` and no queue is bound to receive it.
            PublishTimeout: Not confirmed within `message.timeout` (default:
                `publish_timeout`), the wait for a reconnection included.
            PublishError: The broker refused it.
        """

    @abc.abstractmethod
    def publish_blocking(self, message: Outgoing) -> None:
        """`publish()` from a thread that runs no event loop (a worker thread, a script)."""

    @abc.abstractmethod
    async def queue_size(self, queue: str) -> int | None:
        """Messages ready in `queue` (a passive declare), or None when it does not exist."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Remove the ready messages of `queue`; return how many were removed.

        Raises:
            ConfigurationError: There is no such queue.
        """

    @abc.abstractmethod
    async def consume(self, queue: str, *, prefetch: int, topology: Topology) -> Consumer:
        """Declare `topology`, start consuming `queue` and return once deliveries flow."""

    @abc.abstractmethod
    async def open_reply_channel(
        self, on_replies: Callable[[list[Message]], None], on_lost: Callable[[], None]
    ) -> ReplyChannel:
        """Open a `ReplyChannel` whose callbacks run on the calling event loop."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection and everything opened on it."""


class DeliveryQueue:
    """Messages delivered to one consumer, waiting for one of its tasks to take them.

    A deque, and the tasks waiting for it in turn, each on a `Wakeup` of its own: the
    broker never has more than `prefetch` messages in flight on the channel, so no
    bound is needed here. (An anyio memory object stream did the same with a
    checkpoint, an event and a task-info record per message, a measurable share of a
    short call.) Messages of a channel lost to a reconnection that still sit here are
    skipped: the broker redelivers them on the new channel.

    `put()` and `close()` run on the consumer's loop thread (transports hand messages
    over with a `Handoff`). Messages that no task waits for call the `on_unclaimed`
    callback, if any, so that a task can be started for them.
    """

    __slots__ = ("_closed", "_items", "_on_unclaimed", "_waiters")

    def __init__(self) -> None:
        # The deque is made by the first `put()` (an empty one costs most of a KiB, and
        # a service may hold hundreds of idle consumers); the waiters are few: a list.
        self._items: deque[Message] | None = None
        self._waiters: list[Wakeup] = []
        self._closed = False
        self._on_unclaimed: TaskStarter | None = None

    def set_on_unclaimed(self, starter: TaskStarter | None) -> None:
        """Start tasks with `starter` for messages no task waits for (see `Consumer`)."""
        self._on_unclaimed = starter
        if starter is not None and self._items and not self._closed:
            self._wake(self._items)

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        return self._closed

    def put(self, messages: list[Message]) -> None:
        """Queue `messages` (on the consumer's loop thread)."""
        if self._closed:
            for message in messages:
                _requeue_quietly(message)
            return
        items = self._items
        if items is None:
            items = self._items = deque(messages)
        else:
            items.extend(messages)
        self._wake(items)

    def _wake(self, items: deque[Message] | None) -> None:
        """Wake one waiting task per queued message; tell `on_unclaimed` of the others."""
        if not items:
            return
        waiters = self._waiters
        woken = min(len(waiters), len(items))
        for _ in range(woken):
            waiters.pop(0).set()
        starter = self._on_unclaimed
        if len(items) > woken and starter is not None and starter.wants_task():
            call_in_task(starter.wanted)

    async def receive(self) -> Message:
        """Return the next live message.

        Raises:
            anyio.EndOfStream: The queue was closed.
        """
        while True:
            items = self._items
            if items:
                # A checkpoint first, as any receive: a task finding messages ready
                # each time must still let the others run.
                await anyio.lowlevel.checkpoint()
            else:
                if self._closed:
                    raise anyio.EndOfStream
                woken = Wakeup()
                self._waiters.append(woken)
                try:
                    await woken.wait()
                except BaseException:
                    if woken.is_set():
                        self._wake(self._items)  # woken, then cancelled: another task takes it
                    else:
                        self._waiters.remove(woken)
                    raise
                items = self._items
            if items:
                message = items.popleft()
                if message.settleable:
                    return message
            elif self._closed:
                raise anyio.EndOfStream

    def close(self) -> None:
        """End `receive()`, and requeue the messages nobody started."""
        if self._closed:
            return
        self._closed = True
        items = self._items
        while items:
            _requeue_quietly(items.popleft())
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set()


def _requeue_quietly(message: Message) -> None:
    if not message.settleable:
        return
    try:
        message.nack(requeue=True)
    except Exception:  # a channel closing under us: the broker requeues it anyway
        logger.debug("could not requeue %r", message, exc_info=True)
