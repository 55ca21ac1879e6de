"""Consuming: the `@consume` decorator and the entrypoint that runs it."""

from __future__ import annotations

import cProfile
import functools
import inspect
import io
import logging
import pstats
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from farine._broker import Binding, ExchangeSpec, QueueSpec, Topology
from farine._broker.errors import PublishError
from farine._broker.interface import Outgoing
from farine._broker.message import Properties
from farine._connections import get_connection
from farine._limits import CallLimits, check_max_concurrency, check_timeout
from farine._takers import Takers
from farine.codec import BadBody, BodyDecoder, annotation_of, encode
from farine.entrypoints import (
    NOT_STARTED,
    Entrypoint,
    EntrypointSpec,
    ServiceContext,
    handler_transaction,
    is_async_callable,
    record_spec,
)
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from farine._broker import Connection, Consumer
    from farine._broker.message import Message

__all__ = ("ConsumeSpec", "consume")

logger = logging.getLogger("farine.amqp")

F = TypeVar("F", bound=Callable[..., Any])

_EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout", "headers"})
_RAW = BodyDecoder()

#: Returned by a `def` handler's gate when the service began stopping before a worker
#: thread was free: the message was never started, so it goes back to the queue.
_NOT_STARTED = NOT_STARTED

# Default queue (the routing key or the service name) -> (method, bindings) of the
# consumer using it, per service: two consumers sharing it with different bindings would
# steal each other's messages, so that is refused at start-up.
_default_queues: weakref.WeakKeyDictionary[ServiceContext, dict[str, tuple[str, Topology]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True, slots=True)
class ConsumeSpec(EntrypointSpec):
    """Spec of `farine.amqp.consume()` (see there for the fields)."""

    exchange: str | None
    routing_keys: tuple[str, ...]
    queue: str | None = None
    exchange_type: str | None = None
    prefetch: int | None = None
    durable: bool | None = None
    auto_delete: bool | None = None
    exclusive: bool | None = None
    queue_arguments: tuple[tuple[str, Any], ...] = ()
    transaction: bool | None = None
    ignored_queue_name: str | None = None
    timeout: float | None = None
    max_concurrency: int | None = None
    shutdown_timeout: float | None = None
    idempotent: bool = False
    kind = "consume"

    def bind(self, service: ServiceContext, handler: Callable[..., Any], name: str) -> Entrypoint:
        return _ConsumerEntrypoint(service, handler, name, self)


def consume(
    exchange: str | None = None,
    routing_key: str | Sequence[str] = "",
    *,
    queue: str | None = None,
    exchange_type: str | None = None,
    prefetch: int | None = None,
    durable: bool | None = None,
    auto_delete: bool | None = None,
    exclusive: bool | None = None,
    queue_arguments: Mapping[str, Any] | None = None,
    transaction: bool | None = None,
    queue_name: str | None = None,
    timeout: float | None = None,
    max_concurrency: int | None = None,
    shutdown_timeout: float | None = None,
    idempotent: bool = False,
) -> Callable[[F], F]:
    """Consume messages published to `exchange` with `routing_key`.

    The handler is `(self, body, message)`: `body` is the decoded JSON body (typed by
    the annotation of `body`, `Any` when there is none) and `message` the
    `farine.amqp.Message`, to ack/nack/reject it or read its properties. The method may
    be `def` (run in a worker thread) or `async def`. Up to `prefetch` messages are
    handled at once (`max_concurrency` when it is lower).

    At start-up farine declares the exchange, the queue and the binding (unless the
    `auto_declare` setting is off) with baguette-messaging 0.19's defaults, so that old and
    new consumers of one declaration share one queue: the exchange is the service's name,
    the queue is named after the routing key (after the service when there is none), and
    without a routing key the binding key is the service's name. Ack policy: a message
    the handler did not settle is acked when it returns; when it raises, the traceback is
    logged and the message is requeued once (rejected if it was already redelivered). A
    body that does not decode is logged and rejected without requeue.

    Args:
        exchange: The exchange to bind to (default: the service name).
        routing_key: The binding key (or several; topic patterns on topic exchanges).
            Default: none, which binds with the service name.
        queue: The queue name. Default: the routing key, or the service name when there
            is no routing key or there are several. Services consuming one routing key
            therefore share its queue and compete for its messages, as in baguette-messaging: give
            each its own `queue=` for a copy per service.
        exchange_type: `direct`, `topic`, `fanout` or `headers` (default: `direct`, as
            baguette-messaging's consumers declared whatever the `type` setting says).
        prefetch: Messages in flight at once (default: the `prefetch` setting).
        durable: Declare the queue durable (default: the `durable` setting).
        auto_delete: Delete the queue with its last consumer (default: the setting).
        exclusive: Make the queue exclusive to the connection (default: the setting).
        queue_arguments: x-arguments of the queue (`x-dead-letter-exchange`, ...).
        transaction: With a database, run each call of a `def` handler in a
            transaction (each `db_run` of an `async def` one), committed or rolled back
            before the message is acked or nacked. Default: the `transaction` setting.
        queue_name: Accepted and ignored, as baguette-messaging 0.19 ignored it (a
            warning is logged at start-up); name the queue with `queue=`.
        timeout: Seconds a call may run (default: the `handler_timeout` setting;
            `math.inf`: no limit). Past it, an `async def` handler is cancelled and a
            `def` one abandoned in its thread; the call fails with `HandlerTimeout`.
        max_concurrency: Messages handled at once, below `prefetch` (default: the
            `max_concurrency` setting, else `prefetch`); the rest wait prefetched.
        shutdown_timeout: Seconds this consumer's in-flight calls get to finish once
            the service stops (default: the `shutdown_timeout` setting).
        idempotent: With a database, record each message id in the inbox table in the
            transaction of the (`def`) handler's work, and ack a message whose id was
            already processed without calling the handler again.

    Example:
        ```python
        import farine.amqp

        class Consume:
            @farine.amqp.consume(exchange="publish", routing_key="routing_key")
            def consume_dummy(self, body, message):
                message.ack()
        ```
    """
    if exchange_type is not None and exchange_type not in _EXCHANGE_TYPES:
        raise ConfigurationError(
            f"exchange_type must be one of {', '.join(sorted(_EXCHANGE_TYPES))}, "
            f"not {exchange_type!r}"
        )
    if prefetch is not None and prefetch < 1:
        raise ConfigurationError("prefetch must be >= 1")
    check_timeout("timeout", timeout)
    check_timeout("shutdown_timeout", shutdown_timeout, zero=True)
    check_max_concurrency(max_concurrency)
    keys = (routing_key,) if isinstance(routing_key, str) else tuple(routing_key)
    spec = ConsumeSpec(
        exchange=exchange or None,
        routing_keys=tuple(key for key in keys if key),
        ignored_queue_name=queue_name,
        queue=queue,
        exchange_type=exchange_type,
        prefetch=prefetch,
        durable=durable,
        auto_delete=auto_delete,
        exclusive=exclusive,
        queue_arguments=tuple(sorted((queue_arguments or {}).items())),
        transaction=transaction,
        timeout=timeout,
        max_concurrency=max_concurrency,
        shutdown_timeout=shutdown_timeout,
        idempotent=idempotent,
    )

    def decorate(func: F) -> F:
        return record_spec(func, spec)

    return decorate


def _pick(value: bool | None, default: bool) -> bool:
    return default if value is None else value


class _ConsumerEntrypoint(Entrypoint):
    def __init__(
        self, service: ServiceContext, handler: Callable[..., Any], name: str, spec: ConsumeSpec
    ) -> None:
        super().__init__(service, handler, name)
        settings = service.settings
        try:
            inspect.signature(handler).bind(None, None)
        except TypeError:
            raise ConfigurationError(
                "a consumer takes (self, body, message); this method cannot"
            ) from None
        except ValueError:  # no signature (a builtin): assume it fits
            pass
        self.spec = spec
        self.limits = CallLimits.resolve(
            self.qualname, settings, timeout=spec.timeout, max_concurrency=spec.max_concurrency
        )
        self.call = self.limits.applied_to(service.call)
        # baguette-messaging 0.19's consumer: exchange <- the service, queue and binding
        # key <- the routing key, else the service; type `direct` unless given; the
        # exchange never auto-deleted; the queue's flags from the settings.
        self.exchange = spec.exchange or service.name
        self.routing_keys = spec.routing_keys or (service.name,)
        self.exchange_type = spec.exchange_type or "direct"
        if spec.queue is not None:
            self.queue = spec.queue
        elif len(spec.routing_keys) == 1:
            self.queue = spec.routing_keys[0]
        else:
            self.queue = service.name
        self.prefetch = spec.prefetch or settings.prefetch
        self.call_target = self._call_target(handler)
        service.name_handler(self.call_target, name)
        self.decoder = BodyDecoder(
            annotation_of(handler, "body"),
            where=f"{service.name}.{name}",
            max_size=settings.max_body_size,
            max_depth=settings.body_max_depth,
        )
        if spec.ignored_queue_name is not None:
            logger.warning(
                "%s: queue_name=%r is ignored, as baguette-messaging 0.19 ignored it; the "
                "queue is %r (give queue= to name it)",
                self.qualname, spec.ignored_queue_name, self.queue,
            )  # fmt: skip
        exchange = ExchangeSpec(self.exchange, self.exchange_type, durable=settings.durable)
        queue = QueueSpec(
            self.queue,
            durable=_pick(spec.durable, settings.durable),
            auto_delete=_pick(spec.auto_delete, settings.auto_delete),
            exclusive=_pick(spec.exclusive, settings.exclusive),
            arguments=spec.queue_arguments,
        )
        self.limits.check_consumer_timeout(settings, self.queue, dict(spec.queue_arguments))
        bindings = tuple(Binding(self.queue, self.exchange, key) for key in self.routing_keys)
        self.topology = (
            Topology(exchanges=(exchange,), queues=(queue,), bindings=bindings)
            if settings.auto_declare
            else Topology()
        )
        if spec.queue is None:
            used = _default_queues.setdefault(service, {})
            other = used.get(self.queue)
            if other is not None and other[1] != self.topology:
                raise ConfigurationError(
                    f"{other[0]} already consumes from the default queue {self.queue!r} with "
                    "other bindings; give one of them its own queue (queue=...)"
                )
            used[self.queue] = (name, self.topology)

    def _call_target(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        if self.spec.idempotent:
            inbox = self.service.inbox
            if inbox is None:
                raise ConfigurationError(
                    "idempotent=True needs a database (its inbox table records the "
                    f"messages processed), but db_connector is not set for {self.service.name}"
                )
            handler = inbox(handler, self.queue, self.qualname)
        return handler if is_async_callable(handler) else self._gate(handler)

    def _gate(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        stopping = self.service.stopping

        def gated(body: Any, message: Message) -> Any:
            # Runs in the worker thread: a message that waited for a thread while the
            # service began stopping is not started at all (Event.is_set is a plain read).
            if stopping.is_set():
                return _NOT_STARTED
            return handler(body, message)

        return gated

    def describe(self) -> str:
        keys = ", ".join(repr(k) for k in self.routing_keys)
        return (
            f"{self.qualname} (consume: queue {self.queue!r} <- {self.exchange_type} exchange "
            f"{self.exchange!r}, routing key {keys}, prefetch {self.prefetch}"
            f"{self.limits.describe()}{', idempotent' if self.spec.idempotent else ''}, "
            f"broker {self.service.settings.amqp_uri.split(':')[0]})"
        )

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        connection = await get_connection(self.service.settings)
        consumer = await connection.consume(
            self.queue, prefetch=self.prefetch, topology=self.topology
        )
        try:
            async with anyio.create_task_group() as tg:
                takers = Takers(
                    consumer,
                    functools.partial(self._handle, connection=connection),
                    limit=self.limits.tasks(self.prefetch),
                    # Set for every call a task makes; a transaction, if any, ends
                    # inside each call, before its message is settled.
                    scope=functools.partial(handler_transaction, self.spec.transaction),
                )
                takers.start_in(tg)
                task_status.started()
                # This task waits for the stop itself (no task of its own for it): the
                # stream then ends, and each taker finishes the message it handles.
                await self._cancel_on_stop(consumer)
        finally:
            # Shielded: the channel must close (requeueing what is unacked) even when the
            # service is being cancelled after its shutdown timeout.
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                await consumer.aclose()

    async def _cancel_on_stop(self, consumer: Consumer) -> None:
        await self.service.stopping.wait()
        logger.info("%s: cancelling the consumer of queue %s", self.qualname, self.queue)
        await consumer.cancel()

    async def _handle(self, message: Message, connection: Connection) -> None:
        if self.service.stopping.is_set():
            # Delivered while stopping, before the broker saw the cancel: not started.
            message.nack(requeue=True)
            return
        try:
            body = self.decoder.decode(message.body, message.content_type, message.content_encoding)
        except BadBody as exc:
            logger.error(
                "%s: rejecting message %s from exchange %r (routing key %r): bad body: %s",
                self.qualname, message.message_id, message.exchange, message.routing_key, exc,
            )  # fmt: skip
            message.reject(requeue=False)
            return
        try:
            if self.service.settings.debug and b"__debug__" in message.body:
                await self._profiled(body, message, connection)
            elif await self.call(self.call_target, body, message) is _NOT_STARTED:
                message.nack(requeue=True)
                return
        except Exception:
            if message.settled:
                logger.exception(
                    "%s raised after settling message %s (%s)",
                    self.qualname, message.message_id, message.outcome,
                )  # fmt: skip
            elif message.redelivered:
                logger.exception(
                    "%s raised on redelivered message %s; rejecting it "
                    "(dead-lettered if its queue has a dead-letter exchange)",
                    self.qualname, message.message_id,
                )  # fmt: skip
                message.reject(requeue=False)
            else:
                logger.exception(
                    "%s raised; requeueing message %s once", self.qualname, message.message_id
                )
                message.nack(requeue=True)
            return
        if not message.settled:
            message.ack()

    async def _profiled(self, body: Any, message: Message, connection: Connection) -> None:
        """baguette-messaging's `__debug__`: profile the handler, publish the stats to `debug`."""
        try:
            raw = _RAW.decode(message.body)
        except BadBody:
            raw = None
        if not isinstance(raw, dict) or not raw.get("__debug__"):  # pyright: ignore[reportUnknownMemberType]
            await self.service.call(self.handler, body, message)
            return
        profiler = cProfile.Profile()
        handler = self.handler
        if is_async_callable(handler):

            @functools.wraps(handler)  # observers see whose call this is
            async def run_async(*args: Any) -> Any:
                profiler.enable()
                try:
                    return await handler(*args)
                finally:
                    profiler.disable()

            target: Callable[..., Any] = run_async
        else:

            @functools.wraps(handler)
            def run_sync(*args: Any) -> Any:
                profiler.enable()
                try:
                    return handler(*args)
                finally:
                    profiler.disable()

            target = run_sync
        try:
            await self.service.call(target, body, message)
        finally:
            await self._publish_stats(profiler, dict(raw), connection)  # pyright: ignore[reportUnknownArgumentType]

    async def _publish_stats(
        self, profiler: cProfile.Profile, raw: dict[str, Any], connection: Connection
    ) -> None:
        text = io.StringIO()
        profiler.create_stats()
        pstats.Stats(profiler, stream=text).strip_dirs().print_stats()
        raw["__debug__"] = text.getvalue()
        exchange = self.exchange
        debug_queue = Topology(
            exchanges=self.topology.exchanges,
            queues=(QueueSpec("debug", durable=True),),
            bindings=(Binding("debug", exchange, "debug"),),
        )
        settings = self.service.settings
        try:
            await connection.declare(debug_queue)
            await connection.publish(
                Outgoing(
                    exchange,
                    "debug",
                    encode(raw),
                    Properties(
                        content_type="application/json", delivery_mode=settings.delivery_mode
                    ),
                    timeout=settings.publish_timeout,
                )
            )
        except (PublishError, ConfigurationError) as exc:
            logger.warning("%s: could not publish the __debug__ stats: %s", self.qualname, exc)
