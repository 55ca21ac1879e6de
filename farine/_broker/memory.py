"""`memory://`: an in-process broker with AMQP semantics.

It is farine's default broker: `farine start` runs with nothing else installed, and
users' tests run fast. It keeps AMQP's behaviour where services can observe it:
direct, topic, fanout and headers exchanges; bindings; queues with durable,
auto-delete and exclusive flags; per-consumer prefetch; ack, nack and reject with
requeue and the `redelivered` flag; dead-lettering (`x-dead-letter-exchange`,
`x-dead-letter-routing-key`, with `x-death` counted per queue and reason); per-message
`expiration` and `x-message-ttl`, expired at the head of a queue as RabbitMQ does, on a
timer of each connection's event loop; quorum queues' `x-delivery-count` and
`x-delivery-limit`; declarations that disagree with an existing queue or exchange
fail as RabbitMQ's PRECONDITION_FAILED does; `mandatory` publishing
reports unroutable messages; direct reply-to (`amq.rabbitmq.reply-to`), with RabbitMQ's
quirks: a request that names it must be published on a reply channel, and a reply sent
to it with `mandatory` is reported unroutable even though it is delivered. Nothing is
persisted: the broker lives as long as the process.

The broker is a plain thread-safe object (one re-entrant lock), so it can be used from
event loops of either backend, from worker threads and from plain scripts. Deliveries
reach each consumer's loop through a `Handoff`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import anyio

from farine._broker.errors import PublishError, UnroutableError, declaration_mismatch
from farine._broker.interface import (
    DIRECT_REPLY_TO,
    NO_ACK,
    Binding,
    Connection,
    ConnectionOptions,
    Consumer,
    ExchangeSpec,
    Outgoing,
    QueueSpec,
    ReplyChannel,
    Topology,
    is_direct_reply_to,
)
from farine._broker.loops import Handoff, LoopHandle
from farine._broker.message import Message, Outcome, Properties
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = ("MemoryBroker", "MemoryConnection", "get_broker", "topic_matches")

logger = logging.getLogger("farine.amqp.memory")


@functools.lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on `.`, `*` is one word, `#` zero or more."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in {"*", words[0]}) and _match(rest, words[1:])


def _headers_match(arguments: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    wanted = {k: v for k, v in arguments.items() if not k.startswith("x-")}
    mode = str(arguments.get("x-match", "all"))
    hits = [
        key in headers and (value is None or headers[key] == value) for key, value in wanted.items()
    ]
    return any(hits) if mode.startswith("any") else all(hits)


class _Stored:
    __slots__ = (
        "body",
        "delivery_count",
        "exchange",
        "expires_at",
        "properties",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self, body: bytes, exchange: str, routing_key: str, properties: Properties
    ) -> None:
        self.body = body
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.redelivered = False
        self.delivery_count = 0
        self.expires_at: float | None = None


class _Exchange:
    __slots__ = ("bindings", "spec")

    def __init__(self, spec: ExchangeSpec) -> None:
        self.spec = spec
        self.bindings: dict[tuple[str, str, tuple[tuple[str, Any], ...]], Binding] = {}


class _Queue:
    __slots__ = ("consumers", "messages", "owner", "rr", "spec")

    def __init__(self, spec: QueueSpec, owner: object | None) -> None:
        self.spec = spec
        self.messages: deque[_Stored] = deque()
        self.consumers: list[_ConsumerState] = []
        self.owner = owner
        self.rr = 0

    def argument(self, name: str) -> Any:
        return dict(self.spec.arguments).get(name)

    @property
    def quorum(self) -> bool:
        return self.argument("x-queue-type") == "quorum"

    def enqueue(self, stored: _Stored) -> None:
        """Append a message, with its expiry: the shorter of its own and the queue's TTL."""
        ttls: list[float] = []
        if stored.properties.expiration:
            with contextlib.suppress(ValueError):
                ttls.append(int(stored.properties.expiration) / 1000)
        queue_ttl = self.argument("x-message-ttl")
        if isinstance(queue_ttl, int) and not isinstance(queue_ttl, bool):
            ttls.append(queue_ttl / 1000)
        stored.expires_at = time.monotonic() + min(ttls) if ttls else None
        self.messages.append(stored)


class _ConsumerState:
    """The broker's side of one consumer; it is the settler of the messages it receives."""

    __slots__ = (
        "active",
        "broker",
        "closed",
        "handoff",
        "next_tag",
        "prefetch",
        "queue",
        "tag",
        "unacked",
    )

    def __init__(
        self,
        broker: MemoryBroker,
        queue: _Queue,
        prefetch: int,
        handoff: Handoff[Message],
        tag: str,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = prefetch
        self.handoff = handoff
        self.tag = tag
        self.unacked: dict[int, _Stored] = {}
        self.next_tag = 1
        self.active = True
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed

    def settle(self, delivery_tag: int, outcome: Outcome, requeue: bool) -> None:
        self.broker.settle(self, delivery_tag, outcome, requeue)


class MemoryBroker:
    """An in-process AMQP-like broker (one per `memory://` URI, per process)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.RLock()
        self._exchanges: dict[str, _Exchange] = {}
        self._queues: dict[str, _Queue] = {}
        self._consumer_count = 0
        # Direct reply-to: each reply channel's address, and where its replies go.
        self._reply_channels: dict[str, Handoff[Message]] = {}
        #: (queue, message) of each message rejected or expired, when set to a list
        #: (`farine.testing` does): kept for tests to inspect, dead-letter exchange or not.
        self.dead_letters: list[tuple[str, Message]] | None = None
        # Called (from any thread) when a message that expires was queued: each wakes
        # the expiry timer of one connection, on its event loop.
        self._timers: set[Callable[[], None]] = set()

    # -- declarations ---------------------------------------------------------------------

    def declare_exchange(self, spec: ExchangeSpec) -> None:
        """Declare an exchange; redeclaring with another type is an error, as in AMQP."""
        if not spec.name:
            return
        with self._lock:
            existing = self._exchanges.get(spec.name)
            if existing is None:
                self._exchanges[spec.name] = _Exchange(spec)
            elif existing.spec.type != spec.type:
                raise declaration_mismatch(
                    "exchange", spec.name, "type", existing.spec.type, spec.type
                )

    def declare_queue(self, spec: QueueSpec, owner: object | None = None) -> None:
        """Declare a queue (exclusive ones belong to `owner`, a connection)."""
        with self._lock:
            existing = self._queues.get(spec.name)
            if existing is None:
                self._queues[spec.name] = _Queue(spec, owner if spec.exclusive else None)
            elif existing.owner is not None and existing.owner is not owner:
                raise ConfigurationError(f"queue {spec.name!r} is exclusive to another connection")
            else:
                _check_equivalent(existing.spec, spec)

    def bind(self, binding: Binding) -> None:
        """Bind a queue to an exchange; both must exist."""
        with self._lock:
            exchange = self._exchange(binding.exchange)
            if binding.queue not in self._queues:
                raise ConfigurationError(f"cannot bind: no queue {binding.queue!r}")
            key = (binding.queue, binding.routing_key, binding.arguments)
            exchange.bindings[key] = binding

    def declare(self, topology: Topology, owner: object | None = None) -> None:
        """Declare every exchange, queue and binding of `topology`."""
        with self._lock:
            for exchange in topology.exchanges:
                self.declare_exchange(exchange)
            for queue in topology.queues:
                self.declare_queue(queue, owner)
            for binding in topology.bindings:
                self.bind(binding)

    def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and bindings (its consumers stop receiving)."""
        with self._lock:
            queue = self._queues.pop(name, None)
            if queue is None:
                return
            for consumer in queue.consumers:
                consumer.active = False
            queue.consumers.clear()
            for exchange in self._exchanges.values():
                for key in [k for k in exchange.bindings if k[0] == name]:
                    del exchange.bindings[key]

    def purge(self, name: str) -> int:
        """Remove the ready messages of queue `name`; return how many there were.

        Raises:
            ConfigurationError: There is no such queue.
        """
        with self._lock:
            queue = self._queues.get(name)
            if queue is None:
                raise ConfigurationError(f"no queue {name!r} on broker {self.name}")
            count = len(queue.messages)
            queue.messages.clear()
            return count

    def _exchange(self, name: str) -> _Exchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            raise ConfigurationError(f"no exchange {name!r} on broker {self.name}")
        return exchange

    # -- inspection (tests, debugging) ----------------------------------------------------

    def message_count(self, queue: str) -> int:
        """Messages ready in `queue` (not delivered, or requeued)."""
        with self._lock:
            found = self._queues.get(queue)
            return len(found.messages) if found is not None else 0

    def ready_messages(self, queue: str) -> list[Message]:
        """The messages ready in `queue`, oldest first, left in place (settling is moot)."""
        with self._lock:
            found = self._queues.get(queue)
            stored = list(found.messages) if found is not None else []
        return [_inspected(item, item.properties) for item in stored]

    def unacked_count(self, queue: str) -> int:
        """Messages of `queue` delivered to consumers and not settled yet."""
        with self._lock:
            found = self._queues.get(queue)
            if found is None:
                return 0
            return sum(len(c.unacked) for c in found.consumers)

    def peek(self, queue: str) -> list[Message]:
        """Copies of the messages ready in `queue`, oldest first (they stay queued)."""
        with self._lock:
            found = self._queues.get(queue)
            stored = list(found.messages) if found is not None else []
            return [
                Message(
                    item.body,
                    delivery_tag=0,
                    exchange=item.exchange,
                    routing_key=item.routing_key,
                    redelivered=item.redelivered,
                    properties=item.properties,
                    settler=NO_ACK,
                )
                for item in stored
            ]

    def has_queue(self, queue: str) -> bool:
        """True when `queue` exists."""
        with self._lock:
            return queue in self._queues

    def has_exchange(self, exchange: str) -> bool:
        """True when `exchange` exists."""
        with self._lock:
            return exchange in self._exchanges

    # -- publishing -----------------------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Properties) -> bool:
        """Route a message; return False when no queue received it.

        Raises:
            PublishError: The exchange does not exist.
        """
        with self._lock:
            if not exchange and is_direct_reply_to(routing_key):
                handoff = self._reply_channels.get(routing_key)
                if handoff is not None:
                    handoff.push(
                        Message(
                            body,
                            delivery_tag=0,
                            exchange=exchange,
                            routing_key=routing_key,
                            redelivered=False,
                            properties=properties,
                            settler=NO_ACK,
                        )
                    )
                # As RabbitMQ: a reply-to address is no queue, so this is "not routed".
                return False
            if not exchange:
                queue = self._queues.get(routing_key)
                targets = [queue] if queue is not None else []
            else:
                found = self._exchanges.get(exchange)
                if found is None:
                    raise PublishError(
                        f"no exchange {exchange!r} on broker {self.name} (declare it first: "
                        "a consumer does, and so does a publisher while auto_declare is on)"
                    )
                targets = [
                    self._queues[name] for name in self._route(found, routing_key, properties)
                ]
            for queue in targets:
                self._enqueue(queue, _Stored(body, exchange, routing_key, properties))
            return bool(targets)

    def _enqueue(self, queue: _Queue, stored: _Stored) -> None:
        queue.enqueue(stored)
        self._dispatch(queue)
        if stored.expires_at is not None:
            for wake in list(self._timers):
                wake()

    # -- expiry ---------------------------------------------------------------------------

    def add_timer(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever a message that expires is queued."""
        with self._lock:
            self._timers.add(wake)

    def remove_timer(self, wake: Callable[[], None]) -> None:
        """Stop calling `wake()`."""
        with self._lock:
            self._timers.discard(wake)

    def next_expiry(self) -> float | None:
        """When (`time.monotonic()`) the next message at the head of a queue expires."""
        with self._lock:
            heads = [
                queue.messages[0].expires_at for queue in self._queues.values() if queue.messages
            ]
            due = [at for at in heads if at is not None]
            return min(due) if due else None

    def expire(self) -> None:
        """Dead-letter (or drop) the expired messages at the heads of the queues.

        As in RabbitMQ, a message expires only once it reaches the head of its queue.
        """
        with self._lock:
            now = time.monotonic()
            for queue in list(self._queues.values()):
                messages = queue.messages
                while messages:
                    head = messages[0].expires_at
                    if head is None or head > now:
                        break
                    self._dead_letter(queue, messages.popleft(), "expired")

    def _route(self, exchange: _Exchange, routing_key: str, properties: Properties) -> list[str]:
        kind = exchange.spec.type
        names: dict[str, None] = {}
        for binding in exchange.bindings.values():
            if kind == "fanout":
                hit = True
            elif kind == "topic":
                hit = topic_matches(binding.routing_key, routing_key)
            elif kind == "headers":
                hit = _headers_match(dict(binding.arguments), properties.headers or {})
            else:
                hit = binding.routing_key == routing_key
            if hit and binding.queue in self._queues:
                names[binding.queue] = None
        return list(names)

    # -- direct reply-to ------------------------------------------------------------------

    def add_reply_channel(self, handoff: Handoff[Message]) -> str:
        """Register a reply channel; return its address (replies go to `handoff`)."""
        address = f"{DIRECT_REPLY_TO}.{uuid.uuid4().hex}"
        with self._lock:
            self._reply_channels[address] = handoff
        return address

    def remove_reply_channel(self, address: str) -> None:
        """Forget a reply channel: replies sent to its address are dropped."""
        with self._lock:
            self._reply_channels.pop(address, None)

    # -- consuming ------------------------------------------------------------------------

    def add_consumer(self, queue: str, prefetch: int, handoff: Handoff[Message]) -> _ConsumerState:
        """Start consuming `queue`; deliveries are pushed to `handoff`."""
        with self._lock:
            found = self._queues.get(queue)
            if found is None:
                raise ConfigurationError(
                    f"cannot consume: no queue {queue!r} on broker {self.name}"
                )
            self._consumer_count += 1
            state = _ConsumerState(
                self, found, max(1, prefetch), handoff, f"mem.{self._consumer_count}"
            )
            found.consumers.append(state)
            self._dispatch(found)
            return state

    def cancel(self, state: _ConsumerState) -> None:
        """Stop delivering to `state` (its unacked messages stay unacked)."""
        with self._lock:
            if not state.active:
                return
            state.active = False
            queue = state.queue
            if state in queue.consumers:
                queue.consumers.remove(state)
            if queue.spec.auto_delete and not queue.consumers and not state.unacked:
                self.delete_queue(queue.spec.name)

    def close(self, state: _ConsumerState) -> None:
        """Cancel `state` and requeue its unacked messages, as closing a channel does."""
        with self._lock:
            self.cancel(state)
            if state.closed:
                return
            state.closed = True
            queue = state.queue
            for tag in sorted(state.unacked, reverse=True):
                self._return(queue, state.unacked.pop(tag))
            if queue.spec.auto_delete and not queue.consumers:
                self.delete_queue(queue.spec.name)
            elif self._queues.get(queue.spec.name) is queue:
                self._dispatch(queue)

    def drop_owner(self, owner: object) -> None:
        """Delete the exclusive queues of a closing connection."""
        with self._lock:
            for name in [n for n, q in self._queues.items() if q.owner is owner]:
                self.delete_queue(name)

    def settle(self, state: _ConsumerState, tag: int, outcome: Outcome, requeue: bool) -> None:
        """Settle delivery `tag` of the consumer `state` (gone already: nothing)."""
        with self._lock:
            stored = state.unacked.pop(tag, None)
            if stored is None:  # its channel closed: it was requeued already
                return
            queue = state.queue
            if outcome != "ack":
                if requeue:
                    self._return(queue, stored)
                else:
                    self._dead_letter(queue, stored, "rejected")
            if self._queues.get(queue.spec.name) is queue:
                self._dispatch(queue)

    def _return(self, queue: _Queue, stored: _Stored) -> None:
        """Put an unacked message back at the head of its queue (a quorum queue counts it,
        and dead-letters it past its `x-delivery-limit`)."""
        stored.redelivered = True
        if queue.quorum:
            stored.delivery_count += 1
            limit = queue.argument("x-delivery-limit")
            if isinstance(limit, int) and stored.delivery_count > limit:
                self._dead_letter(queue, stored, "delivery_limit")
                return
        queue.messages.appendleft(stored)

    def _dead_letter(self, queue: _Queue, stored: _Stored, reason: str) -> None:
        exchange = queue.argument("x-dead-letter-exchange")
        if exchange is None and self.dead_letters is None:
            return
        routing_key = queue.argument("x-dead-letter-routing-key") or stored.routing_key
        headers = dict(stored.properties.headers or {})
        earlier: list[Any] = list(headers.get("x-death") or [])
        deaths: list[dict[str, Any]] = [
            dict(cast("dict[str, Any]", death)) for death in earlier if isinstance(death, dict)
        ]
        # As RabbitMQ: one entry per queue and reason, counted, the latest first.
        same = next(
            (d for d in deaths if d.get("queue") == queue.spec.name and d.get("reason") == reason),
            None,
        )
        if same is not None:
            deaths.remove(same)
            death = {**same, "count": int(same.get("count") or 0) + 1}
        else:
            death = {
                "queue": queue.spec.name,
                "reason": reason,
                "exchange": stored.exchange,
                "routing-keys": [stored.routing_key],
                "count": 1,
            }
        headers["x-death"] = [death, *deaths]
        props = Properties(**{
            name: getattr(stored.properties, name) for name in Properties.__slots__  # pyright: ignore[reportAttributeAccessIssue]
        })  # fmt: skip
        props.headers = headers
        props.expiration = None
        if self.dead_letters is not None:
            self.dead_letters.append((queue.spec.name, _inspected(stored, props)))
        if exchange is None:
            return
        try:
            self.publish(str(exchange), str(routing_key), stored.body, props)
        except PublishError:
            logger.warning(
                "dead-letter exchange %r of queue %r does not exist", exchange, queue.spec.name
            )

    def _dispatch(self, queue: _Queue) -> None:
        """Deliver ready messages to consumers with room in their prefetch window."""
        consumers = queue.consumers
        while queue.messages and consumers:
            count = len(consumers)
            chosen: _ConsumerState | None = None
            for i in range(count):
                candidate = consumers[(queue.rr + i) % count]
                if candidate.active and len(candidate.unacked) < candidate.prefetch:
                    chosen = candidate
                    queue.rr = (queue.rr + i + 1) % count
                    break
            if chosen is None:
                return
            stored = queue.messages.popleft()
            if stored.expires_at is not None and stored.expires_at <= time.monotonic():
                self._dead_letter(queue, stored, "expired")
                continue
            tag = chosen.next_tag
            chosen.next_tag += 1
            chosen.unacked[tag] = stored
            properties = stored.properties
            if stored.delivery_count:
                headers = {**(properties.headers or {}), "x-delivery-count": stored.delivery_count}
                properties = dataclasses.replace(properties, headers=headers)
            chosen.handoff.push(
                Message(
                    stored.body,
                    delivery_tag=tag,
                    exchange=stored.exchange,
                    routing_key=stored.routing_key,
                    redelivered=stored.redelivered,
                    properties=properties,
                    settler=chosen,
                    consumer_tag=chosen.tag,
                )
            )


def _inspected(stored: _Stored, properties: Properties) -> Message:
    """A copy of a stored message for inspection: settling it does nothing."""
    return Message(
        stored.body,
        delivery_tag=0,
        exchange=stored.exchange,
        routing_key=stored.routing_key,
        redelivered=stored.redelivered,
        properties=properties,
        settler=NO_ACK,
    )


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def get_broker(uri: str = "memory://") -> MemoryBroker:
    """Return the process's broker for `uri` (`memory://`, or `memory://name` for another)."""
    name = uri.rstrip("/") or "memory:"
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryBroker(uri)
        return broker


class _MemoryConsumer(Consumer):
    def __init__(self, broker: MemoryBroker, queue: str, prefetch: int) -> None:
        super().__init__(queue, prefetch)
        self._broker = broker
        self._handoff = Handoff[Message](LoopHandle.current(), self.deliveries.put)
        self.state = broker.add_consumer(queue, prefetch, self._handoff)

    async def cancel(self) -> None:
        self._broker.cancel(self.state)
        self.deliveries.close()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._broker.cancel(self.state)
        self.deliveries.close()
        self._broker.close(self.state)
        await anyio.lowlevel.checkpoint()


class MemoryConnection(Connection):
    """A connection to the in-process broker of its URI."""

    kind = "memory"

    def __init__(self, uri: str, options: ConnectionOptions) -> None:
        super().__init__(uri, options)
        self.broker = get_broker(uri)
        self._consumers: list[_MemoryConsumer] = []
        self._reply_channels: list[_MemoryReplyChannel] = []

    async def declare(self, topology: Topology) -> None:
        self.broker.declare(topology, owner=self)
        await anyio.lowlevel.checkpoint()

    async def queue_size(self, queue: str) -> int | None:
        await anyio.lowlevel.checkpoint()
        return self.broker.message_count(queue) if self.broker.has_queue(queue) else None

    async def purge(self, queue: str) -> int:
        await anyio.lowlevel.checkpoint()
        return self.broker.purge(queue)

    async def expire_messages(self) -> None:
        """Expire messages when their time comes, on this loop's clock, until cancelled.

        Messages also expire when they reach a consumer; this timer makes those of
        queues nobody consumes (delay queues) expire on time.
        """
        home = LoopHandle.current()
        changed = anyio.Event()

        def poke() -> None:
            changed.set()

        def wake() -> None:
            home.call_soon(poke)

        self.broker.add_timer(wake)
        try:
            while True:
                due = self.broker.next_expiry()
                wait = math.inf if due is None else max(0.0, due - time.monotonic())
                with anyio.move_on_after(wait):
                    await changed.wait()
                changed = anyio.Event()
                self.broker.expire()
        finally:
            self.broker.remove_timer(wake)

    async def publish(self, message: Outgoing) -> None:
        await anyio.lowlevel.checkpoint()
        self.publish_blocking(message)

    def publish_blocking(self, message: Outgoing) -> None:
        if message.properties.reply_to == DIRECT_REPLY_TO:
            # RabbitMQ closes the channel: nobody consumes the replies on it.
            raise PublishError(
                f"reply_to {DIRECT_REPLY_TO!r} needs a reply channel (open_reply_channel)"
            )
        self.route(message)

    def route(self, message: Outgoing) -> None:
        """Publish `message` as it is (its `reply_to` included), at once.

        Raises:
            PublishError: The connection is closed.
            UnroutableError: `message.mandatory` and no queue is bound to receive it.
        """
        if self.closed:
            raise PublishError("the connection is closed")
        if message.declare is not None:
            self.broker.declare_exchange(message.declare)
        routed = self.broker.publish(
            message.exchange, message.routing_key, message.body, message.properties
        )
        if not routed and message.mandatory:
            raise UnroutableError(_unroutable(message.exchange, message.routing_key))

    async def consume(self, queue: str, *, prefetch: int, topology: Topology) -> Consumer:
        self.broker.declare(topology, owner=self)
        consumer = _MemoryConsumer(self.broker, queue, prefetch)
        self._consumers.append(consumer)
        await anyio.lowlevel.checkpoint()
        return consumer

    async def open_reply_channel(
        self, on_replies: Callable[[list[Message]], None], on_lost: Callable[[], None]
    ) -> ReplyChannel:
        if self.closed:
            raise PublishError("the connection is closed")
        channel = _MemoryReplyChannel(self, on_replies)
        self._reply_channels.append(channel)
        await anyio.lowlevel.checkpoint()
        return channel

    async def aclose(self) -> None:
        self.closed = True
        for channel in self._reply_channels:
            self.broker.remove_reply_channel(channel.address)
        self._reply_channels.clear()
        for consumer in self._consumers:
            self.broker.close(consumer.state)
        self._consumers.clear()
        self.broker.drop_owner(self)
        await anyio.lowlevel.checkpoint()


class _MemoryReplyChannel(ReplyChannel):
    """Direct reply-to on the memory broker: an address whose replies go to a callback."""

    def __init__(
        self, connection: MemoryConnection, on_replies: Callable[[list[Message]], None]
    ) -> None:
        self._connection = connection
        self.address = connection.broker.add_reply_channel(
            Handoff[Message](LoopHandle.current(), on_replies)
        )

    async def publish(self, message: Outgoing) -> None:
        await anyio.lowlevel.checkpoint()
        if message.properties.reply_to == DIRECT_REPLY_TO:
            properties = dataclasses.replace(message.properties, reply_to=self.address)
            message = dataclasses.replace(message, properties=properties)
        self._connection.route(message)

    async def aclose(self) -> None:
        self._connection.broker.remove_reply_channel(self.address)
        await anyio.lowlevel.checkpoint()


def _check_equivalent(existing: QueueSpec, wanted: QueueSpec) -> None:
    """Raise as RabbitMQ's PRECONDITION_FAILED when `wanted` redeclares `existing` otherwise."""
    name = existing.name
    for flag in ("durable", "auto_delete"):
        have, want = getattr(existing, flag), getattr(wanted, flag)
        if have != want:
            raise declaration_mismatch("queue", name, flag, have, want)
    have_args, want_args = dict(existing.arguments), dict(wanted.arguments)
    for argument in sorted(set(have_args) | set(want_args)):
        have, want = have_args.get(argument), want_args.get(argument)
        if have != want:
            raise declaration_mismatch("queue", name, argument, have, want)


def _unroutable(exchange: str, routing_key: str) -> str:
    return (
        f"unroutable message: no queue is bound to exchange {exchange!r} "
        f"with routing key {routing_key!r}"
    )


def drop_broker(uri: str) -> None:
    """Forget the broker of `uri` (once nothing uses it): the next `get_broker(uri)`
    makes an empty one."""
    name = uri.rstrip("/") or "memory:"
    with _brokers_lock:
        _brokers.pop(name, None)


def iter_brokers() -> Iterable[MemoryBroker]:
    """The brokers of this process (for tests and debugging)."""
    with _brokers_lock:
        return list(_brokers.values())
