"""Publishing: `Publisher` (blocking), `AsyncPublisher` (awaited) and `@publish`."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

from farine import _tracing
from farine import settings as farine_settings
from farine._broker import ExchangeSpec
from farine._broker.interface import Outgoing
from farine._broker.message import Properties
from farine._connections import get_connection, get_connection_blocking
from farine._inject import Injected, injector
from farine.codec import encode_body
from farine.entrypoints import current_service

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Mapping, Sequence

    from opentelemetry.trace import Tracer

    from farine.ops._metrics import ServiceMetrics
    from farine.settings import ServiceSettings

__all__ = ("AsyncPublisher", "PublishSpec", "Publisher", "publish", "publish_specs")

logger = logging.getLogger("farine.amqp")

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")

PUBLISH_SPECS_ATTRIBUTE = "__farine_publishes__"


@dataclass(frozen=True, slots=True)
class PublishSpec:
    """Where a method decorated with `@publish` publishes (the decorator's arguments).

    Recorded on the method for tools that describe a service (`farine asyncapi`); `None`
    means the default, resolved when the publisher is built (see `publish()`).
    """

    exchange: str | None
    routing_keys: tuple[str, ...] | None
    exchange_type: str | None


def publish_specs(obj: object) -> tuple[PublishSpec, ...]:
    """Return the `PublishSpec`s recorded on a method by `@publish` (empty when none)."""
    specs: object = getattr(obj, PUBLISH_SPECS_ATTRIBUTE, ())
    if not isinstance(specs, tuple):
        return ()
    items = cast(tuple[object, ...], specs)
    return tuple(spec for spec in items if isinstance(spec, PublishSpec))


def _settings_for(name: str) -> ServiceSettings:
    service = current_service()
    if service is not None and service.name == name:
        return service.settings
    return farine_settings.get(name)


def _metrics() -> ServiceMetrics | None:
    """The metrics of the service publishing, when the operations endpoint is on."""
    service = current_service()
    return None if service is None else service.metrics


@contextlib.contextmanager
def _observed(
    exchange: str,
    key: str,
    properties: Properties,
    size: int,
    tracer: Tracer | None,
    metrics: ServiceMetrics | None,
) -> Generator[Properties]:
    """One publish observed: in a span (yields the properties carrying its trace context)
    and timed until confirmed, for whichever of tracing and metrics is on."""
    with contextlib.ExitStack() as observed:
        sent = properties
        if tracer is not None:
            sent = observed.enter_context(
                _tracing.publish_span(tracer, exchange, key, properties, size)
            )
        if metrics is not None:
            observed.enter_context(metrics.publishing())
        yield sent


class _BasePublisher:
    """What both publishers share: where to publish, and how a message is built."""

    def __init__(
        self,
        exchange: str | None = None,
        routing_key: str | Sequence[str] | None = None,
        service: str | None = None,
        *,
        exchange_type: str | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        name = service or exchange or ""
        self.settings = settings if settings is not None else _settings_for(name)
        self.exchange = exchange if exchange is not None else name
        self.routing_key: str | Sequence[str] = routing_key if routing_key is not None else name
        self.exchange_type = exchange_type or self.settings.type
        self._declare = (
            ExchangeSpec(
                self.exchange,
                self.exchange_type,
                durable=self.settings.durable,
                auto_delete=self.settings.auto_delete,
            )
            if self.settings.auto_declare and self.exchange
            else None
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} exchange={self.exchange!r} "
            f"routing_key={self.routing_key!r} broker={self.settings.amqp_uri.split(':')[0]}>"
        )

    def _build(
        self,
        body: object,
        routing_key: str | Sequence[str] | None,
        headers: Mapping[str, Any] | None,
        correlation_id: str | None,
        reply_to: str | None,
        message_id: str | None,
        expiration: float | str | None,
        delivery_mode: int | None,
    ) -> tuple[list[str], bytes, Properties]:
        keys = self.routing_key if routing_key is None else routing_key
        routing_keys = [keys] if isinstance(keys, str) else list(keys)
        if isinstance(expiration, int | float):
            expiration = str(max(0, int(expiration * 1000)))
        data, content_type, content_encoding = encode_body(body, self.settings.serializer)
        properties = Properties(
            content_type=content_type,
            content_encoding=content_encoding,
            headers=dict(headers) if headers else None,
            delivery_mode=delivery_mode or self.settings.delivery_mode,
            correlation_id=correlation_id,
            reply_to=reply_to,
            message_id=message_id or os.urandom(16).hex(),  # as uuid4().hex, cheaper
            expiration=expiration,
            timestamp=datetime.datetime.now(datetime.UTC).replace(microsecond=0),
        )
        return routing_keys, data, properties


class Publisher(_BasePublisher):
    """Publish to one exchange, blocking until the broker confirms each message.

    Use it in `def` handlers (where `@publish` injects one) and in plain scripts with no
    runtime; in `async def` code use `AsyncPublisher`, which is awaited.

    Args:
        exchange: The exchange to publish to (default: the service name).
        routing_key: The default routing key, or several (default: the service name).
        service: Whose settings to use (default: `exchange`), as in baguette-messaging.
        exchange_type: The exchange type to declare (default: the `type` setting).
        settings: Explicit settings, instead of reading them for `service`.

    Example:
        ```python
        from farine.amqp import Publisher

        Publisher("orders", "created").send({"id": 1})
        ```
    """

    def send(
        self,
        body: object,
        *,
        routing_key: str | Sequence[str] | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
        expiration: float | str | None = None,
        delivery_mode: int | None = None,
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish `body` (a dict, Struct, dataclass...: encoded as JSON) and wait for the confirm.

        Args:
            body: The message body; encoded with msgspec, as JSON (or msgpack, with the
                `serializer = msgpack` setting). `bytes` (`bytearray`, `memoryview`) go
                as they are, with content type `application/data` and content
                encoding `binary`, as kombu sends raw bytes.
            routing_key: Overrides the routing key; a list publishes once per key.
            headers: Application headers.
            correlation_id: The `correlation_id` property.
            reply_to: The `reply_to` property.
            message_id: The `message_id` property (default: a random UUID).
            expiration: Per-message TTL: seconds as a number, or milliseconds as a string.
            delivery_mode: 1 (transient) or 2 (persistent); default from settings.
            mandatory: Raise `UnroutableError` when no queue receives the message.
            timeout: Seconds to wait for the connection and the confirm (default:
                the `publish_timeout` setting).

        Raises:
            UnroutableError: No queue is bound to receive the message.
            PublishTimeout: Not confirmed within the timeout (broker unreachable?).
            PublishError: The broker refused it.
        """
        keys, data, properties = self._build(
            body, routing_key, headers, correlation_id, reply_to, message_id, expiration,
            delivery_mode,
        )  # fmt: skip
        connection = get_connection_blocking(self.settings)
        limit = self.settings.publish_timeout if timeout is None else timeout
        metrics = _metrics()
        tracer = _tracing.tracer()
        for key in keys:
            if tracer is None and metrics is None:
                connection.publish_blocking(
                    Outgoing(self.exchange, key, data, properties, mandatory, limit, self._declare)
                )
                continue
            with _observed(self.exchange, key, properties, len(data), tracer, metrics) as sent:
                connection.publish_blocking(
                    Outgoing(self.exchange, key, data, sent, mandatory, limit, self._declare)
                )

    __call__ = send


class AsyncPublisher(_BasePublisher):
    """Publish to one exchange from async code: `await publisher(body)`.

    Same arguments as `Publisher`; `@publish` injects one into `async def` methods.
    """

    async def send(
        self,
        body: object,
        *,
        routing_key: str | Sequence[str] | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
        expiration: float | str | None = None,
        delivery_mode: int | None = None,
        mandatory: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109  # also bounds the wait for a reconnection; raises PublishTimeout
    ) -> None:
        """Publish `body` and wait for the broker's confirm (see `Publisher.send`)."""
        keys, data, properties = self._build(
            body, routing_key, headers, correlation_id, reply_to, message_id, expiration,
            delivery_mode,
        )  # fmt: skip
        connection = await get_connection(self.settings)
        limit = self.settings.publish_timeout if timeout is None else timeout
        metrics = _metrics()
        tracer = _tracing.tracer()
        for key in keys:
            if tracer is None and metrics is None:
                await connection.publish(
                    Outgoing(self.exchange, key, data, properties, mandatory, limit, self._declare)
                )
                continue
            with _observed(self.exchange, key, properties, len(data), tracer, metrics) as sent:
                await connection.publish(
                    Outgoing(self.exchange, key, data, sent, mandatory, limit, self._declare)
                )

    __call__ = send


def publish(
    exchange: str | None = None,
    routing_key: str | Sequence[str] | None = None,
    *,
    exchange_type: str | None = None,
) -> Callable[[Callable[Concatenate[S, Any, P], R]], Callable[Concatenate[S, P], R]]:
    """Inject a publisher as the first argument after `self`.

    In a `def` method the publisher is a `Publisher`: `publish(body)` blocks until the
    broker confirms. In an `async def` method it is an `AsyncPublisher`: use
    `await publish(body)`. The method may be called by an entrypoint (stacked under
    `@farine.execute.method()`, say), by another method, or directly from a script.
    The decorated method keeps its other parameters for type checkers.

    Args:
        exchange: The exchange to publish to (default: the service name).
        routing_key: The default routing key (default: the service name).
        exchange_type: The exchange type to declare (default: the `type` setting).

    Example:
        ```python
        import farine.amqp

        class Publish:
            @farine.amqp.publish(exchange="consume", routing_key="routing_key")
            def publish_dummy(self, publish):
                publish({"result": 0})
        ```
    """

    def make(cls: type[_BasePublisher]) -> Callable[[object], object]:
        def build(self: object) -> object:
            name = type(self).__name__.lower()
            return cls(
                exchange if exchange is not None else name,
                routing_key if routing_key is not None else name,
                service=name,
                exchange_type=exchange_type,
            )

        return build

    inject = injector(make(Publisher), make(AsyncPublisher), Injected(Publisher, AsyncPublisher))
    keys = (
        None
        if routing_key is None
        else ((routing_key,) if isinstance(routing_key, str) else tuple(routing_key))
    )
    spec = PublishSpec(exchange, keys, exchange_type)

    def decorate(method: Callable[Concatenate[S, Any, P], R]) -> Callable[Concatenate[S, P], R]:
        wrapper = inject(method)
        # Recorded for `farine asyncapi`; stacked `@publish` decorators add up.
        setattr(wrapper, PUBLISH_SPECS_ATTRIBUTE, (*publish_specs(method), spec))
        return wrapper

    return decorate
