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

from farine import _telemetry as telemetry
from farine import _tracing
from farine._broker import Binding, ExchangeSpec, QueueSpec, Topology
from farine._broker.errors import PublishError
from farine._broker.interface import Outgoing
from farine._broker.message import Properties
from farine._connections import get_connection
from farine._limits import CallLimits, check_max_concurrency, check_timeout
from farine._retry import Backoff, Retry, RetryPolicy
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
from farine.ops._outcomes import outcome_of

from ._dead_letter import DeadLetter, restore_route
from ._failures import FailurePath

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from anyio.abc import TaskStatus

    from farine._broker import Connection, Consumer
    from farine._broker.message import Message
    from farine.ops._metrics import ServiceMetrics
    from farine.ops._outcomes import MessageOutcome
    from farine.settings import ServiceSettings

__all__ = ("ConsumeSpec", "consume")

logger = logging.getLogger("farine.amqp")

F = TypeVar("F", bound=Callable[..., Any])

_EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout", "headers"})
_QUEUE_TYPES = frozenset({"classic", "quorum"})
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
    retry: Retry | None = None
    dead_letter: str | bool | None = None
    queue_type: str | None = None
    delivery_limit: int | None = None
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
    retry: Retry | None = None,
    dead_letter: str | bool | None = None,
    queue_type: str | None = None,
    delivery_limit: int | None = None,
) -> Callable[[F], F]:
    """Consume messages published to `exchange` with `routing_key`.

    The handler is `(self, body, message)`: `body` is the decoded JSON body (typed by
    the annotation of that first parameter, whatever its name, `Any` when there is
    none) and `message` the
    `farine.amqp.Message`, to ack/nack/reject it or read its properties. The method may
    be `def` (run in a worker thread) or `async def`. Up to `prefetch` messages are
    handled at once (`max_concurrency` when it is lower).

    At start-up farine declares the exchange, the queue and the binding (unless the
    `auto_declare` setting is off) with baguette-messaging 0.19's defaults, so that old and
    new consumers of one declaration share one queue: the exchange is the service's name,
    the queue is named after the routing key (after the service when there is none), and
    without a routing key the binding key is the service's name. Ack policy: a message
    the handler did not settle is acked when it returns. When it raises, `retry` decides:
    by default a transient failure (`farine.amqp.is_transient`) is retried later, with
    backoff, within the `retry_budget` setting; a message that exhausts its retries,
    fails permanently or has a body that does not decode goes to the dead-letter queue
    `<queue>.dead`, with headers saying why (see the "Delivery guarantees" guide).

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
        retry: How failures are retried (`farine.amqp.Retry`; `Retry.seed()` for
            baguette-messaging's requeue-once rule). Default: transient failures only,
            within the `retry_budget` setting.
        dead_letter: Where failed messages go: True for `<queue>.dead` through the
            default exchange, an exchange name to declare it and bind `<queue>.dead` to
            it, False to reject them instead (dropped unless the queue has a dead-letter
            exchange). Default: the `dead_letter` and `dead_letter_exchange` settings;
            a queue declared with `x-dead-letter-exchange` in `queue_arguments` rejects.
        queue_type: `classic` or `quorum` (durable, replicated). Default: the
            `queue_type` setting.
        delivery_limit: Deliveries of a message a quorum queue allows before it drops it
            (its `x-delivery-limit`). Default: the `delivery_limit` setting.

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
    if retry is not None and not isinstance(retry, Retry):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ConfigurationError(f"retry must be a farine.amqp.Retry, not {retry!r}")
    if queue_type is not None and queue_type not in _QUEUE_TYPES:
        raise ConfigurationError(f"queue_type must be classic or quorum, not {queue_type!r}")
    if delivery_limit is not None and delivery_limit < 1:
        raise ConfigurationError("delivery_limit must be >= 1")
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
        retry=retry,
        dead_letter=dead_letter,
        queue_type=queue_type,
        delivery_limit=delivery_limit,
    )

    def decorate(func: F) -> F:
        return record_spec(func, spec)

    return decorate


def _pick(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def _queue_name(spec: ConsumeSpec, service: str) -> str:
    if spec.queue is not None:
        return spec.queue
    if len(spec.routing_keys) == 1:
        return spec.routing_keys[0]
    return service


def dead_letter_queue(spec: ConsumeSpec, service: str, settings: ServiceSettings) -> str | None:
    """The dead-letter queue of the consumer `spec` of `service`, or None when it has none."""
    queue = _queue_spec(_queue_name(spec, service), spec, settings)
    dead_letter = _dead_letter(queue, spec, settings)
    return dead_letter.queue_name if dead_letter is not None else None


def _queue_spec(name: str, spec: ConsumeSpec, settings: ServiceSettings) -> QueueSpec:
    """The work queue's declaration: no argument unless asked (the seed declares it too)."""
    durable = _pick(spec.durable, settings.durable)
    auto_delete = _pick(spec.auto_delete, settings.auto_delete)
    exclusive = _pick(spec.exclusive, settings.exclusive)
    arguments = dict(spec.queue_arguments)
    queue_type = spec.queue_type or settings.queue_type
    delivery_limit = spec.delivery_limit or settings.delivery_limit
    if queue_type == "quorum":
        if spec.durable is False or exclusive or auto_delete:
            raise ConfigurationError(
                f"queue {name!r}: a quorum queue is durable, never exclusive nor auto-deleted"
            )
        durable = True
        arguments.setdefault("x-queue-type", "quorum")
        if delivery_limit is not None:
            arguments["x-delivery-limit"] = delivery_limit
    elif spec.delivery_limit is not None:
        raise ConfigurationError(f"queue {name!r}: delivery_limit needs queue_type='quorum'")
    return QueueSpec(
        name,
        durable=durable,
        auto_delete=auto_delete,
        exclusive=exclusive,
        arguments=tuple(sorted(arguments.items())),
    )


def _dead_letter(
    queue: QueueSpec, spec: ConsumeSpec, settings: ServiceSettings
) -> DeadLetter | None:
    arguments = dict(queue.arguments)
    quorum = arguments.get("x-queue-type") == "quorum"
    wanted = spec.dead_letter
    if wanted is None:
        # A hand-written x-dead-letter-exchange keeps the broker's dead-lettering.
        if not settings.dead_letter or "x-dead-letter-exchange" in arguments:
            wanted = False
        else:
            wanted = settings.dead_letter_exchange or True
    if wanted is False:
        return None
    exchange = "" if wanted is True else wanted
    return DeadLetter(queue.name, exchange, durable=queue.durable, quorum=quorum)


def _failure_path(
    service: ServiceContext, entrypoint: str, queue: QueueSpec, spec: ConsumeSpec
) -> FailurePath:
    settings = service.settings
    retry = spec.retry or Retry.transient(
        budget=settings.retry_budget,
        backoff=Backoff(initial=settings.retry_delay, cap=settings.retry_max_delay),
    )
    return FailurePath(
        service=service.name,
        entrypoint=entrypoint,
        queue=queue.name,
        policy=RetryPolicy(retry),
        dead_letter=_dead_letter(queue, spec, settings),
        durable=queue.durable,
        quorum=dict(queue.arguments).get("x-queue-type") == "quorum",
        publish_timeout=settings.publish_timeout,
    )


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _body_annotation(handler: Callable[..., Any]) -> Any:
    """The annotation of a bound handler's body: its first parameter, whatever its name
    (`Any` without one, or when the body goes to `*args`)."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except ValueError:  # no signature (a builtin)
        return Any
    positional = [parameter for parameter in parameters if parameter.kind in _POSITIONAL]
    return annotation_of(handler, positional[0].name) if positional else Any


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
        self.queue = _queue_name(spec, service.name)
        self.prefetch = spec.prefetch or settings.prefetch
        self._consumer: Consumer | None = None
        self.call_target = self._call_target(handler)
        service.name_handler(self.call_target, name)
        self.decoder = BodyDecoder(
            _body_annotation(handler),
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
        queue = _queue_spec(self.queue, spec, settings)
        self.failures = _failure_path(service, self.qualname, queue, spec)
        self.limits.check_consumer_timeout(settings, self.queue, dict(queue.arguments))
        bindings = tuple(Binding(self.queue, self.exchange, key) for key in self.routing_keys)
        self.topology = (
            Topology(exchanges=(exchange,), queues=(queue,), bindings=bindings)
            if settings.auto_declare
            else Topology()
        )
        dead_letter = self.failures.dead_letter
        if settings.auto_declare and dead_letter is not None and dead_letter.exchange:
            # A dead-letter exchange asked for by name is declared at once, so that
            # other queues can be bound to it before anything fails.
            extra = dead_letter.destination().topology
            self.topology = Topology(
                exchanges=self.topology.exchanges + extra.exchanges,
                queues=self.topology.queues + extra.queues,
                bindings=self.topology.bindings + extra.bindings,
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
        self._consumer = consumer
        handle = functools.partial(self._handle, connection=connection)
        if self.service.metrics is not None:
            handle = functools.partial(self._handle_counted, handle, self.service.metrics)
        try:
            async with anyio.create_task_group() as tg:
                takers = Takers(
                    consumer,
                    handle,
                    limit=self.limits.tasks(self.prefetch),
                    # Set for every call a task makes; a transaction, if any, ends
                    # inside each call, before its message is settled.
                    scope=functools.partial(handler_transaction, self.spec.transaction),
                )
                # No task waits while the consumer is idle: the first message starts one.
                takers.start_in(tg, on_demand=True)
                consumer.on_unclaimed(takers)
                task_status.started()
                # This task waits for the stop itself (no task of its own for it): the
                # stream then ends, and each taker finishes the message it handles.
                await self._cancel_on_stop(consumer)
        finally:
            consumer.on_unclaimed(None)  # the task group is gone: no taker can start
            self._consumer = None
            # Shielded: the channel must close (requeueing what is unacked) even when the
            # service is being cancelled after its shutdown timeout.
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                await consumer.aclose()

    async def not_ready(self) -> str | None:
        consumer = self._consumer
        if consumer is None:
            return f"not consuming from queue {self.queue!r}"
        return await consumer.not_ready()

    async def _handle_counted(
        self,
        handle: Callable[[Message], Awaitable[MessageOutcome | None]],
        metrics: ServiceMetrics,
        message: Message,
    ) -> None:
        """`_handle()` with the metrics on: count how the message ended."""
        outcome = await handle(message)
        if outcome is None:
            outcome = outcome_of(message)
        if outcome is not None:
            metrics.message_outcome(self.name, outcome)

    async def _cancel_on_stop(self, consumer: Consumer) -> None:
        await self.service.stopping.wait()
        logger.info("%s: cancelling the consumer of queue %s", self.qualname, self.queue)
        await consumer.cancel()

    async def _handle(self, message: Message, connection: Connection) -> MessageOutcome | None:
        """Decode, call the handler, settle `message`, in a span when tracing is on.

        Returns the outcome for `farine_messages_total` when the message's own state
        does not tell it (`retried`, `dead_lettered`: a failure path that republishes
        the message acks it), else None.
        """
        if not telemetry.on():
            return await self._process(message, connection)
        call = _tracing.consume_call(
            self.qualname, self.service.name, self.queue, message.exchange,
            message.routing_key, message.message_id, message.correlation_id,
            message.headers, len(message.body),
        )  # fmt: skip
        with telemetry.handling(call):
            return await self._process(message, connection)

    async def _process(self, message: Message, connection: Connection) -> MessageOutcome | None:
        if self.service.stopping.is_set():
            # Delivered while stopping, before the broker saw the cancel: not started.
            message.nack(requeue=True)
            return None
        if not message.exchange:
            restore_route(message)  # back from a delay queue: as first published
        try:
            body = self.decoder.decode(message.body, message.content_type, message.content_encoding)
        except BadBody as exc:
            return await self.failures.failed(message, exc, connection)
        try:
            if self.service.settings.debug and b"__debug__" in message.body:
                await self._profiled(body, message, connection)
            elif await self.call(self.call_target, body, message) is _NOT_STARTED:
                message.nack(requeue=True)
                return None
        except Exception as exc:
            _tracing.record_failure(exc)
            if message.settled:
                logger.exception(
                    "%s raised after settling message %s (%s)",
                    self.qualname, message.message_id, message.outcome,
                )  # fmt: skip
                return None
            return await self.failures.failed(message, exc, connection)
        if not message.settled:
            message.ack()
        return None

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
