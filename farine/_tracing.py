"""OpenTelemetry tracing: spans for farine's messages, W3C trace context in AMQP headers.

Optional: it needs the `otel` extra (`opentelemetry-api`) *and* a tracer provider that
records (an SDK the application configured). Until then `tracer()` returns None, which
is the one check each publish, consume, RPC call, SSE event and execute run makes: no
span, no header, nothing else. Once a provider is found it is kept (OpenTelemetry's
global provider cannot be replaced).

Spans follow OpenTelemetry's messaging semantic conventions (`messaging.system =
rabbitmq`, the exchange as destination, routing key, message and conversation ids);
the trace context travels in the AMQP headers (`traceparent`, `tracestate`, through
the configured propagator), so a trace crosses services and RPC hops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # the `otel` extra is not installed: tracing stays off
    otel_context = None
    propagate = None
    trace = None

if TYPE_CHECKING:
    from collections.abc import Generator, Mapping

    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

    from farine._broker.message import Properties

__all__ = (
    "SYSTEM",
    "HandlerCall",
    "capture",
    "consume_call",
    "current_ids",
    "execute_call",
    "handler_span",
    "inject",
    "publish_span",
    "record_failure",
    "rpc_client_span",
    "rpc_server_call",
    "sse_call",
    "tracer",
    "use_tracer_provider",
)

SYSTEM: Final = "rabbitmq"
_SCOPE: Final = "farine"


#: Seconds between two looks for a provider while none is configured: reading the
#: global one is an environment lookup, too much for every message.
PROBE_INTERVAL: Final = 1.0


class _State:
    tracer: Tracer | None = None
    #: A provider given by `use_tracer_provider()` (tests), else None: the global one.
    provider: TracerProvider | None = None
    #: When to look for a provider again (`time.monotonic()`).
    next_probe: float = 0.0


_state = _State()


def tracer() -> Tracer | None:
    """The tracer of farine's spans, or None while no recording provider is configured."""
    found = _state.tracer
    if found is not None or trace is None or time.monotonic() < _state.next_probe:
        return found
    return _probe()


def _probe() -> Tracer | None:
    assert trace is not None
    provider = _state.provider or trace.get_tracer_provider()
    # Without an SDK the global provider is a proxy (or the no-op one): no span records.
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        _state.next_probe = time.monotonic() + PROBE_INTERVAL
        return None
    import farine

    _state.tracer = provider.get_tracer(_SCOPE, farine.__version__)
    return _state.tracer


@contextlib.contextmanager
def use_tracer_provider(provider: TracerProvider | None) -> Generator[None]:
    """Trace with `provider` instead of the global one during the block (tests).

    Args:
        provider: An SDK `TracerProvider` (with an in-memory exporter, say); None: the
            global provider's (tracing off while none is configured).
    """
    previous = (_state.provider, _state.tracer, _state.next_probe)
    _state.provider = provider
    _state.tracer = None if provider is None else provider.get_tracer(_SCOPE)
    _state.next_probe = 0.0
    try:
        yield
    finally:
        _state.provider, _state.tracer, _state.next_probe = previous


def capture() -> Context | None:
    """The caller's trace context when tracing is on (an RPC call records it in the
    caller's thread, its span starts on the event loop), else None."""
    if tracer() is None or otel_context is None:
        return None
    return otel_context.get_current()


def current_ids() -> tuple[str, str] | None:
    """The trace id and span id (hex) of the span current here, if one is recording."""
    if trace is None or _state.tracer is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def inject(headers: dict[str, Any], context: Context | None = None) -> None:
    """Add the trace context (`traceparent`, `tracestate`) of `context` to `headers`."""
    if propagate is not None:
        propagate.inject(headers, context=context)


class _HeaderGetter:
    """Reads a propagator's keys from AMQP headers (values may arrive as bytes)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER: Final = _HeaderGetter()


def _extract(headers: Mapping[str, Any] | None) -> Context | None:
    if not headers or propagate is None:
        return None
    getter: Getter[Mapping[str, Any]] = _GETTER  # pyright: ignore[reportAssignmentType]
    return propagate.extract(headers, getter=getter)


def _messaging(
    operation: str,
    exchange: str,
    routing_key: str,
    message_id: str | None,
    conversation_id: str | None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send" if operation == "publish" else operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": exchange,
    }
    if routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
    if message_id:
        attributes["messaging.message.id"] = message_id
    if conversation_id:
        attributes["messaging.message.conversation_id"] = conversation_id
    return attributes


def _kind(name: str) -> SpanKind:
    assert trace is not None
    return getattr(trace.SpanKind, name)


@contextlib.contextmanager
def publish_span(
    tracer: Tracer, exchange: str, routing_key: str, properties: Properties, size: int
) -> Generator[Properties]:
    """A producer span around one publish; yields `properties` with the trace context
    added to a copy of their headers."""
    attributes = _messaging(
        "publish", exchange, routing_key, properties.message_id, properties.correlation_id
    )
    attributes["messaging.message.body.size"] = size
    with tracer.start_as_current_span(
        f"publish {exchange or '(default)'}", kind=_kind("PRODUCER"), attributes=attributes
    ):
        headers = dict(properties.headers or {})
        inject(headers)
        yield dataclasses.replace(properties, headers=headers)


@contextlib.contextmanager
def rpc_client_span(
    tracer: Tracer, parent: Context | None, service: str, method: str
) -> Generator[tuple[Span, dict[str, Any]]]:
    """A client span around one RPC call, child of the caller's `parent` context; yields
    the span and the headers that carry its context to the server.

    The span is not made current (a stream's span lives across the reader's steps).
    """
    assert trace is not None
    attributes = _messaging("publish", service, f"{service}__{method}", None, None)
    attributes.update({"rpc.system": "farine", "rpc.service": service, "rpc.method": method})
    span = tracer.start_span(
        f"{service}/{method}", context=parent, kind=_kind("CLIENT"), attributes=attributes
    )
    headers: dict[str, Any] = {}
    inject(headers, trace.set_span_in_context(span, parent))
    try:
        yield span, headers
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.end()


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerCall:
    """What a handler span says about the call it covers.

    Attributes:
        name: The span name.
        kind: `CONSUMER`, `SERVER` or `INTERNAL`.
        service: The service.
        entrypoint: `service.method`.
        message_id: The id of the message (or SSE event) handled, if any.
        correlation_id: The call's correlation id, if any.
        headers: The incoming AMQP headers (the caller's trace context), if any.
        attributes: The semantic-convention attributes of the call.
    """

    name: str
    kind: str
    service: str
    entrypoint: str
    message_id: str | None
    correlation_id: str | None
    headers: Mapping[str, Any] | None
    attributes: Mapping[str, Any]


def consume_call(
    entrypoint: str,
    service: str,
    queue: str,
    exchange: str,
    routing_key: str,
    message_id: str | None,
    correlation_id: str | None,
    headers: Mapping[str, Any] | None,
    size: int,
) -> HandlerCall:
    """The span of a consumer's handling of one message."""
    attributes = _messaging("process", exchange, routing_key, message_id, correlation_id)
    attributes["messaging.destination.subscription.name"] = queue
    attributes["messaging.message.body.size"] = size
    name = f"process {exchange or '(default)'}"
    return HandlerCall(
        name, "CONSUMER", service, entrypoint, message_id, correlation_id, headers, attributes
    )


def rpc_server_call(
    entrypoint: str,
    service: str,
    method: str,
    correlation_id: str | None,
    headers: Mapping[str, Any] | None,
) -> HandlerCall:
    """The span of an RPC method's handling of one call."""
    attributes = _messaging("process", service, f"{service}__{method}", correlation_id, None)
    if correlation_id:
        attributes["messaging.message.conversation_id"] = correlation_id
    attributes.update({"rpc.system": "farine", "rpc.service": service, "rpc.method": method})
    return HandlerCall(
        f"{service}/{method}",
        "SERVER",
        service,
        entrypoint,
        correlation_id,
        correlation_id,
        headers,
        attributes,
    )


def sse_call(entrypoint: str, service: str, event_type: str, event_id: str | None) -> HandlerCall:
    """The span of an SSE listener's handling of one event."""
    attributes: dict[str, Any] = {"messaging.operation.type": "process", "sse.event": event_type}
    if event_id:
        attributes["messaging.message.id"] = event_id
    return HandlerCall(
        f"process {entrypoint}", "CONSUMER", service, entrypoint, event_id, None, None, attributes
    )


def execute_call(entrypoint: str, service: str, run: int) -> HandlerCall:
    """The span of one run of an execute method."""
    attributes = {"farine.execute.run": run}
    return HandlerCall(
        f"execute {entrypoint}", "INTERNAL", service, entrypoint, None, None, None, attributes
    )


@contextlib.contextmanager
def handler_span(tracer: Tracer, call: HandlerCall) -> Generator[Span]:
    """A span, current in the block, around one handler call: child of the trace
    context its message carries, if any."""
    attributes = {"farine.service": call.service, "farine.entrypoint": call.entrypoint}
    attributes.update(call.attributes)
    with tracer.start_as_current_span(
        call.name, context=_extract(call.headers), kind=_kind(call.kind), attributes=attributes
    ) as span:
        yield span


def record_failure(exc: BaseException) -> None:
    """Record on the current span (if one records) that its handler raised `exc`.

    Called where farine catches a handler's exception (it never reaches the span's
    block): on the error path only.
    """
    if trace is None or _state.tracer is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
