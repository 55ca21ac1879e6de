"""The Prometheus metrics of a runtime, and the hooks the entrypoints report through.

Built only when the operations endpoint is on (`http` setting, `--http`): services
then get a `ServiceMetrics` in `ServiceContext.metrics`; otherwise that is None and no
hook is called. Labels name services, entrypoints and RPC methods, never a message id
or a body, so that the number of series stays bounded.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Final, Literal, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from farine._broker.errors import (
    AccessRefused,
    BrokerUnavailable,
    PublishError,
    PublishTimeout,
    ResourceRefused,
    UnroutableError,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from farine.ops._outcomes import MessageOutcome

__all__ = (
    "CONTENT_TYPE",
    "METRIC_NAMES",
    "CallTimer",
    "ConnectionState",
    "InFlight",
    "MessageCounts",
    "Metrics",
    "ServiceMetrics",
    "publish_error_kind",
)

#: `farine_connection_state`: 0 down (connecting, reconnecting), 1 open, 2 blocked.
ConnectionState = Literal[0, 1, 2]

#: The content type of `Metrics.exposition()` (Prometheus text format 0.0.4).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Every metric farine exposes, as Prometheus shows it (counters with `_total`).
METRIC_NAMES: Final[tuple[str, ...]] = (
    "farine_messages_total",
    "farine_handler_seconds",
    "farine_handlers_in_flight",
    "farine_publish_seconds",
    "farine_publish_errors_total",
    "farine_rpc_client_seconds",
    "farine_rpc_server_seconds",
    "farine_connection_state",
    "farine_reconnects_total",
    "farine_sse_events_total",
    "farine_sse_reconnects_total",
    "farine_worker_threads_busy",
)

_SERVICE = ("service",)
_ENTRYPOINT = ("service", "entrypoint")


def publish_error_kind(exc: PublishError) -> str:
    """The `kind` label of `farine_publish_errors_total` for `exc`."""
    if isinstance(exc, PublishTimeout):
        return "timeout"
    if isinstance(exc, UnroutableError):
        return "unroutable"
    if isinstance(exc, AccessRefused | ResourceRefused):
        return "refused"
    if isinstance(exc, BrokerUnavailable):
        return "unavailable"
    return "error"


class MessageCounts(Collector):
    """`farine_messages_total`: how many messages each consumer ended with each outcome.

    The counts are plain integers, incremented on the event loop's thread by
    `ServiceMetrics.message_outcome()` (a handled message costs no lock) and read when
    the registry is collected.
    """

    name: Final = "farine_messages"
    documentation: Final = (
        "Messages consumed, by how they ended (acked, rejected, requeued, retried, dead_lettered)."
    )

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}

    def add(self, service: str, entrypoint: str, outcome: MessageOutcome) -> None:
        """Count one message of `service.entrypoint` that ended with `outcome`."""
        key = (service, entrypoint, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            self.name, self.documentation, labels=[*_ENTRYPOINT, "outcome"]
        )
        for labels, count in self.counts.copy().items():
            family.add_metric(labels, count)
        yield family


class InFlight:
    """Handler calls of one entrypoint running now, read by its gauge when scraped."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def value(self) -> float:
        return self.count


class Metrics:
    """The metrics of one runtime, in a registry of their own.

    Example:
        ```python
        metrics = Metrics()
        metrics.service("orders").message_outcome("on_order", "acked")
        text = metrics.exposition()
        ```
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.messages = MessageCounts()
        registry.register(self.messages)
        self.handler_seconds = Histogram(
            "farine_handler_seconds",
            "Seconds a handler call took (waiting for a worker thread included).",
            _ENTRYPOINT,
            registry=registry,
        )
        self.handlers_in_flight = Gauge(
            "farine_handlers_in_flight",
            "Handler calls running now.",
            _ENTRYPOINT,
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "farine_publish_seconds",
            "Seconds a publish took until the broker confirmed it.",
            _SERVICE,
            registry=registry,
        )
        self.publish_errors = Counter(
            "farine_publish_errors",
            "Publishes that failed, by kind (timeout, unroutable, refused, closed).",
            [*_SERVICE, "kind"],
            registry=registry,
        )
        self.rpc_client_seconds = Histogram(
            "farine_rpc_client_seconds",
            "Seconds an RPC call took, by the called service and method, and outcome.",
            ["service", "method", "outcome"],
            registry=registry,
        )
        self.rpc_server_seconds = Histogram(
            "farine_rpc_server_seconds",
            "Seconds an RPC method took to answer, by method and outcome.",
            ["service", "method", "outcome"],
            registry=registry,
        )
        self.connection_state = Gauge(
            "farine_connection_state",
            "The service's broker connection: 0 down (reconnecting), 1 open, 2 blocked by "
            "the broker (resource alarm).",
            _SERVICE,
            registry=registry,
        )
        self.reconnects = Counter(
            "farine_reconnects",
            "Times the service's broker connection was opened again after a loss.",
            _SERVICE,
            registry=registry,
        )
        self.sse_events = Counter(
            "farine_sse_events",
            "Server-Sent Events received by an SSE listener.",
            _ENTRYPOINT,
            registry=registry,
        )
        self.sse_reconnects = Counter(
            "farine_sse_reconnects",
            "Reconnection attempts of an SSE listener to its stream.",
            _ENTRYPOINT,
            registry=registry,
        )
        self.worker_threads_busy = Gauge(
            "farine_worker_threads_busy",
            "Worker threads running a `def` handler now.",
            _SERVICE,
            registry=registry,
        )
        self._services: dict[str, ServiceMetrics] = {}

    def service(self, name: str) -> ServiceMetrics:
        """The hooks of service `name` (made once)."""
        found = self._services.get(name)
        if found is None:
            found = self._services[name] = ServiceMetrics(self, name)
        return found

    def exposition(self) -> bytes:
        """Every metric, in the Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class CallTimer:
    """One handler call in flight (see `ServiceMetrics.call_started()`)."""

    __slots__ = ("_in_flight", "_seconds", "_start")

    def __init__(self, in_flight: InFlight, seconds: Histogram) -> None:
        self._in_flight = in_flight
        self._seconds = seconds
        in_flight.count += 1
        self._start = time.perf_counter()

    def finished(self) -> None:
        """The call returned or raised: no longer in flight; observe its duration."""
        self._in_flight.count -= 1
        self._seconds.observe(time.perf_counter() - self._start)


#: A labelled metric family (`Counter`, `Gauge`, `Histogram`).
M = TypeVar("M", bound=MetricWrapperBase)


class ServiceMetrics:
    """The hooks one service reports through (its `ServiceContext.metrics`).

    Every method is cheap and never raises; labels are the service's name and the
    entrypoint (method) name given.
    """

    def __init__(self, metrics: Metrics, service: str) -> None:
        self.metrics = metrics
        self.name = service
        self._reconnects_seen = 0
        # Labelled children, looked up once: `labels()` costs a lock and a dict lookup.
        self._calls: dict[str, tuple[InFlight, Histogram]] = {}
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}

    def message_outcome(self, entrypoint: str, outcome: MessageOutcome) -> None:
        """Count one message of consumer `entrypoint` that ended with `outcome`.

        The consumer calls it once per message it handled; a failure path that
        republishes a message for a later retry says `retried`, one that sends it to a
        dead-letter queue says `dead_lettered`.
        """
        self.metrics.messages.add(self.name, entrypoint, outcome)

    def _child(self, family: M, *labels: str) -> M:
        """The child of `family` with `labels` (looked up once per combination)."""
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return cast("M", child)

    def call_started(self, entrypoint: str | None) -> CallTimer:
        """Count a handler call of `entrypoint` in flight; `finished()` times it."""
        name = entrypoint or "unknown"
        children = self._calls.get(name)
        if children is None:
            metrics = self.metrics
            in_flight = InFlight()
            metrics.handlers_in_flight.labels(self.name, name).set_function(in_flight.value)
            children = (in_flight, metrics.handler_seconds.labels(self.name, name))
            self._calls[name] = children
        return CallTimer(*children)

    @contextlib.contextmanager
    def publishing(self) -> Generator[None]:
        """A block that is one publish: timed until confirmed, its failure counted by
        kind (`timeout`, `unroutable`, `refused`, `unavailable`, `error`)."""
        start = time.perf_counter()
        try:
            yield
        except PublishError as exc:
            self._child(self.metrics.publish_errors, self.name, publish_error_kind(exc)).inc()
            raise
        seconds = time.perf_counter() - start
        self._child(self.metrics.publish_seconds, self.name).observe(seconds)

    def rpc_called(self, service: str, method: str, outcome: str, seconds: float) -> None:
        """Record an RPC call to `service.method` that ended with `outcome`."""
        self._child(self.metrics.rpc_client_seconds, service, method, outcome).observe(seconds)

    def rpc_served(self, method: str, outcome: str, seconds: float) -> None:
        """Record a call of this service's RPC `method` that ended with `outcome`."""
        self._child(self.metrics.rpc_server_seconds, self.name, method, outcome).observe(seconds)

    def sse_event(self, entrypoint: str) -> None:
        """Count an event received by SSE listener `entrypoint`."""
        self._child(self.metrics.sse_events, self.name, entrypoint).inc()

    def sse_reconnected(self, entrypoint: str) -> None:
        """Count a reconnection of SSE listener `entrypoint` to its stream."""
        self._child(self.metrics.sse_reconnects, self.name, entrypoint).inc()

    def connection(self, state: ConnectionState, reconnects: int) -> None:
        """Record the state of the service's broker connection and its reconnections
        so far (sampled when the metrics are read)."""
        self._child(self.metrics.connection_state, self.name).set(state)
        if reconnects > self._reconnects_seen:
            self._child(self.metrics.reconnects, self.name).inc(reconnects - self._reconnects_seen)
            self._reconnects_seen = reconnects

    def worker_threads(self, busy: int) -> None:
        """Record how many worker threads run a handler now (sampled when read)."""
        self._child(self.metrics.worker_threads_busy, self.name).set(busy)
