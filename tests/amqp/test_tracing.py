"""OpenTelemetry traces across publish, consume and RPC, on memory:// and RabbitMQ, on
asyncio and trio; JSON log records labelled with the handler call's ids."""

from __future__ import annotations

import io
import itertools
import logging
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import farine.amqp
import farine.execute
import farine.rpc
import farine.stream
import farine.testing
from farine import _logging
from farine._logging import JsonFormatter
from farine._redact import RedactingFilter
from farine._tracing import use_tracer_provider
from farine.amqp import AsyncPublisher, Message
from farine.stream import Event

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.amqp.conftest import Broker

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans recorded in memory by an SDK tracer provider, farine's for the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with use_tracer_provider(provider):
        yield exporter
    provider.shutdown()


def _one(spans: tuple[ReadableSpan, ...], name: str, kind: SpanKind) -> ReadableSpan:
    found = [span for span in spans if span.name == name and span.kind == kind]
    assert len(found) == 1, [(span.name, span.kind) for span in spans]
    return found[0]


def _services(exchange: str, queue: str, style: str) -> tuple[type, type]:
    class Prices:
        @farine.rpc.method()
        async def price(self, item: str) -> int:
            return len(item)

    if style == "def":

        class Orders:  # pyright: ignore[reportRedeclaration]
            @farine.amqp.consume(exchange=exchange, routing_key="created", queue=queue)
            @farine.rpc.client("prices")
            def created(self, rpc: Any, body: dict[str, str], message: Message) -> int:
                return rpc.price(body["item"])

    else:

        class Orders:
            @farine.amqp.consume(exchange=exchange, routing_key="created", queue=queue)
            @farine.rpc.client("prices")
            async def created(self, rpc: Any, body: dict[str, str], message: Message) -> int:
                return await rpc.price(body["item"])

    return Orders, Prices


@pytest.mark.parametrize("style", ["def", "async"])
async def test_publish_consume_and_nested_rpc_call_form_one_trace(
    broker: Broker, exporter: InMemorySpanExporter, style: str
) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    orders, prices = _services(exchange, queue, style)
    async with farine.testing.running(orders, prices, config=broker.config()) as app:
        await AsyncPublisher(exchange, "created").send({"item": "pear"}, message_id="m-1")
        [call] = await app.wait_for("orders.created")
    # Leaving the block drained every call: each span has ended.
    assert call.result == 4
    spans = exporter.get_finished_spans()
    publish = _one(spans, f"publish {exchange}", SpanKind.PRODUCER)
    process = _one(spans, f"process {exchange}", SpanKind.CONSUMER)
    client = _one(spans, "prices/price", SpanKind.CLIENT)
    server = _one(spans, "prices/price", SpanKind.SERVER)
    chain = [publish, process, client, server]
    assert {span.context.trace_id for span in chain if span.context} == {
        publish.context.trace_id if publish.context else 0
    }
    assert publish.parent is None
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None
        assert parent.context is not None
        assert child.parent.span_id == parent.context.span_id, (parent.name, child.name)
    for span in (publish, process):
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "rabbitmq"
        assert span.attributes["messaging.destination.name"] == exchange
        assert span.attributes["messaging.rabbitmq.destination.routing_key"] == "created"
        assert span.attributes["messaging.message.id"] == "m-1"
    assert publish.attributes is not None
    assert process.attributes is not None
    assert publish.attributes["messaging.operation.type"] == "send"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.subscription.name"] == queue
    assert process.attributes["farine.entrypoint"] == "orders.created"
    assert client.attributes is not None
    assert server.attributes is not None
    conversation = client.attributes["messaging.message.conversation_id"]
    assert conversation
    assert server.attributes["messaging.message.conversation_id"] == conversation
    assert server.attributes["messaging.destination.name"] == "prices"
    assert server.attributes["rpc.method"] == "price"


async def test_a_failing_handler_marks_its_span_as_an_error(
    broker: Broker, exporter: InMemorySpanExporter
) -> None:
    exchange = broker.exchange()

    class Orders:
        @farine.amqp.consume(exchange=exchange, routing_key="bad", queue=broker.queue())
        async def created(self, body: Any, message: Message) -> None:
            message.reject(requeue=False)
            raise ValueError("no such order")

    class Calc:
        @farine.rpc.method()
        def divide(self, a: int, b: int) -> float:
            return a / b

    async with farine.testing.running(Orders, Calc, config=broker.config()) as app:
        await app.publish(exchange, "bad", {"id": 1})
        await app.wait_for("orders.created")
        with pytest.raises(farine.rpc.RemoteError):
            await app.rpc("calc").divide(1, 0)
    spans = exporter.get_finished_spans()
    process = _one(spans, f"process {exchange}", SpanKind.CONSUMER)
    assert process.status.status_code is StatusCode.ERROR
    assert [event.name for event in process.events] == ["exception"]
    server = _one(spans, "calc/divide", SpanKind.SERVER)
    client = _one(spans, "calc/divide", SpanKind.CLIENT)
    assert server.status.status_code is StatusCode.ERROR
    assert client.status.status_code is StatusCode.ERROR


async def test_execute_runs_have_spans_and_parent_what_they_publish(
    broker: Broker, exporter: InMemorySpanExporter
) -> None:
    exchange = broker.exchange()

    class Sink:
        @farine.amqp.consume(exchange=exchange, routing_key="tick", queue=broker.queue())
        def tick(self, body: Any, message: Message) -> None:
            pass

    class Ticker:
        @farine.execute.method(restart=False)
        @farine.amqp.publish(exchange=exchange, routing_key="tick")
        async def run(self, publish: AsyncPublisher) -> None:
            await publish({"n": 1})

    async with farine.testing.running(Sink, Ticker, config=broker.config()) as app:
        await app.wait_for("sink.tick")
    spans = exporter.get_finished_spans()
    run = _one(spans, "execute ticker.run", SpanKind.INTERNAL)
    publish = _one(spans, f"publish {exchange}", SpanKind.PRODUCER)
    process = _one(spans, f"process {exchange}", SpanKind.CONSUMER)
    assert run.context is not None
    assert publish.context is not None
    assert publish.parent is not None
    assert publish.parent.span_id == run.context.span_id
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id


async def test_without_a_tracer_provider_messages_carry_no_trace_context(broker: Broker) -> None:
    exchange = broker.exchange()

    class Orders:
        @farine.amqp.consume(exchange=exchange, routing_key="created", queue=broker.queue())
        async def created(self, body: Any, message: Message) -> None:
            pass

    with use_tracer_provider(None):
        async with farine.testing.running(Orders, config=broker.config()) as app:
            await AsyncPublisher(exchange, "created").send({"id": 1})
            [call] = await app.wait_for("orders.created")
    assert call.message is not None
    assert "traceparent" not in call.message.headers


@pytest.fixture
def json_records(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Records of the `farine` and `tests` loggers, as `log_format = json` writes them."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    monkeypatch.setattr(_logging.state, "json", True)
    loggers = [logging.getLogger("farine"), logging.getLogger("tests.orders")]
    for logger in loggers:
        logger.addHandler(handler)
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    try:
        yield output
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.mark.parametrize("style", ["def", "async"])
async def test_json_log_records_of_a_handler_call_carry_its_ids(
    broker: Broker, exporter: InMemorySpanExporter, json_records: io.StringIO, style: str
) -> None:
    exchange = broker.exchange()
    log = logging.getLogger("tests.orders")

    if style == "def":

        class Orders:  # pyright: ignore[reportRedeclaration]
            @farine.amqp.consume(
                exchange=exchange,
                routing_key="created",
                queue=broker.queue(),
                retry=farine.amqp.Retry.seed(),  # requeued once, then rejected
                dead_letter=False,
            )
            def created(self, body: Any, message: Message) -> None:
                log.info("order %s for amqp://app:S3cretPass@host/", body["id"])
                raise ValueError("out of stock")

    else:

        class Orders:
            @farine.amqp.consume(
                exchange=exchange,
                routing_key="created",
                queue=broker.queue(),
                retry=farine.amqp.Retry.seed(),  # requeued once, then rejected
                dead_letter=False,
            )
            async def created(self, body: Any, message: Message) -> None:
                log.info("order %s for amqp://app:S3cretPass@host/", body["id"])
                raise ValueError("out of stock")

    async with farine.testing.running(Orders, config=broker.config()) as app:
        await app.publish(exchange, "created", {"id": 7}, message_id="m-7", correlation_id="c-7")
        await app.wait_for("orders.created", count=2)  # requeued once, then rejected
    records = [msgspec.json.decode(line) for line in json_records.getvalue().splitlines()]
    mine = [r for r in records if r["logger"] == "tests.orders"]
    # The failure path's lines: "raised ... requeueing it once", then "rejecting".
    failures = [r for r in records if r["logger"] == "farine.amqp" and "m-7" in r["message"]]
    assert (len(mine), len(failures)) == (2, 2), records
    process = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.CONSUMER]
    trace_ids = {f"{span.context.trace_id:032x}" for span in process if span.context}
    for record in mine + failures:
        assert record["service"] == "orders"
        assert record["entrypoint"] == "orders.created"
        assert record["message_id"] == "m-7"
        assert record["correlation_id"] == "c-7"
        assert record["trace_id"] in trace_ids
        assert len(record["span_id"]) == 16
    assert mine[0]["message"] == "order 7 for amqp://app:***@host/"
    assert any("ValueError: out of stock" in r.get("exception", "") for r in failures)
    assert "S3cretPass" not in json_records.getvalue()
    outside = [r for r in records if r["logger"] == "farine.runtime"]
    assert outside
    assert all("service" not in r and "trace_id" not in r for r in outside)


async def test_a_streamed_rpc_call_is_one_client_span_and_one_server_span(
    broker: Broker, exporter: InMemorySpanExporter
) -> None:
    class Counter:
        @farine.rpc.method()
        def count(self, n: int) -> Iterator[int]:
            yield from range(n)

    async with farine.testing.running(Counter, config=broker.config()) as app:
        stream = app.rpc("counter").count(3, __stream__=True)
        assert [item async for item in stream] == [0, 1, 2]
        short = app.rpc("counter").count(10, __stream__=True)
        async for _ in short:
            break  # left early: the client span ends too
        await short.aclose()
    spans = exporter.get_finished_spans()
    clients = [span for span in spans if span.kind == SpanKind.CLIENT]
    servers = [span for span in spans if span.kind == SpanKind.SERVER]
    assert len(clients) == len(servers) == 2
    for client in clients:
        assert client.context is not None
        [server] = [s for s in servers if s.parent and s.parent.span_id == client.context.span_id]
        assert server.attributes is not None
        assert client.attributes is not None
        assert (
            server.attributes["messaging.message.conversation_id"]
            == client.attributes["messaging.message.conversation_id"]
        )


async def test_sse_events_have_spans(exporter: InMemorySpanExporter) -> None:
    class Feed:
        @farine.stream.http(endpoint="https://prices.example.com/events")
        async def on_price(self, data: dict[str, int]) -> None:
            if data["price"] < 0:
                raise ValueError("negative price")

    events = [Event(type="price", data='{"price": 3}', id="1"), {"price": -1}]
    transport = farine.testing.sse_transport(events)
    async with farine.testing.running(Feed, http_transport=transport) as app:
        await app.wait_for("feed.on_price", count=2)
    spans = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.CONSUMER]
    assert [span.name for span in spans] == ["process feed.on_price"] * 2
    assert spans[0].attributes is not None
    assert spans[0].attributes["messaging.message.id"] == "1"
    assert spans[0].attributes["sse.event"] == "price"
    assert spans[0].status.status_code is StatusCode.UNSET
    assert spans[1].status.status_code is StatusCode.ERROR
