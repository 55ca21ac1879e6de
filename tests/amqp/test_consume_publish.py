"""Behaviour of consume/publish, on memory:// and RabbitMQ, on asyncio and trio."""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Any, TypedDict

import anyio
import msgspec
import pytest

import farine.amqp
import farine.testing
from farine._broker.interface import Outgoing
from farine._connections import get_connection
from farine.amqp import AsyncPublisher, Message, MessageStateError, Properties, UnroutableError
from tests.amqp.conftest import Broker, Recorder, running

if TYPE_CHECKING:
    from farine.runtime import Runtime

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct):
    id: int
    item: str
    note: Any = None


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Pair(TypedDict):
    a: int
    b: str


def publisher(runtime: Runtime, exchange: str, routing_key: str = "rk") -> AsyncPublisher:
    return AsyncPublisher(
        exchange, routing_key, settings=runtime.config.service("tests") if runtime.config else None
    )  # type: ignore[union-attr]


async def publish_raw(runtime: Runtime, exchange: str, routing_key: str, body: bytes) -> None:
    assert runtime.config is not None
    connection = await get_connection(runtime.config.service("tests"))
    await connection.publish(
        Outgoing(exchange, routing_key, body, Properties(content_type="application/json"))
    )


def describe(message: Message) -> tuple[Any, ...]:
    return (
        message.routing_key,
        message.exchange,
        dict(message.headers),
        message.correlation_id,
        message.reply_to,
        message.message_id,
        message.content_type,
        message.redelivered,
        threading.current_thread().name,
    )


async def test_round_trip_with_def_and_async_handlers(broker: Broker) -> None:
    exchange = broker.exchange()
    q_sync, q_async = broker.queue("sync"), broker.queue("async")
    seen = Recorder()

    class Service:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=q_sync)
        def on_sync(self, body: Any, message: Message) -> None:
            seen.add(("def", body, *describe(message)))

        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=q_async)
        async def on_async(self, body: Any, message: Message) -> None:
            seen.add(("async", body, *describe(message)))

        @farine.amqp.publish(exchange=exchange, routing_key="rk")
        def send_sync(self, publish: farine.amqp.Publisher, body: Any) -> None:
            publish(
                body, headers={"h": "v"}, correlation_id="c-1", reply_to="r-q", message_id="m-1"
            )

        @farine.amqp.publish(exchange=exchange, routing_key="rk")
        async def send_async(self, publish: AsyncPublisher, body: Any) -> None:
            await publish(body, headers={"h": "w"}, correlation_id="c-2", message_id="m-2")

    async with running(Service, config=broker.config()) as runtime:
        service = runtime.services["service"]
        await service.run_sync(service.instance.send_sync, {"n": 1})  # type: ignore[attr-defined]
        with service.activate():
            await service.instance.send_async({"n": 2})  # type: ignore[attr-defined]
        items = await seen.wait_for(4)
    by_kind = sorted((i[0], i[1]["n"]) for i in items)
    assert by_kind == [("async", 1), ("async", 2), ("def", 1), ("def", 2)]
    first = next(i for i in items if i[0] == "async" and i[1]["n"] == 1)
    assert first[2:10] == (
        "rk",
        exchange,
        {"h": "v"},
        "c-1",
        "r-q",
        "m-1",
        "application/json",
        False,
    )
    second = next(i for i in items if i[0] == "def" and i[1]["n"] == 2)
    assert second[4:8] == ({"h": "w"}, "c-2", None, "m-2")
    # `def` handlers run in worker threads, `async def` ones on the loop.
    assert {i[10] for i in items if i[0] == "def"} != {threading.current_thread().name}
    assert {i[10] for i in items if i[0] == "async"} == {threading.current_thread().name}
    # Acked after returning: nothing left in the queues.
    assert await broker.ready(q_sync) == 0
    assert await broker.ready(q_async) == 0


async def test_typed_bodies(broker: Broker) -> None:
    exchange = broker.exchange()
    seen = Recorder()

    # The body is the first parameter after `self`, whatever its name.
    class Typed:
        @farine.amqp.consume(exchange=exchange, routing_key="order", queue=broker.queue("o"))
        async def order(self, order: Order, message: Message) -> None:
            seen.add(order)

        @farine.amqp.consume(exchange=exchange, routing_key="point", queue=broker.queue("p"))
        def point(self, point: Point, msg: Message) -> None:
            seen.add(point)

        @farine.amqp.consume(exchange=exchange, routing_key="pair", queue=broker.queue("t"))
        async def pair(self, body: Pair, message: Message) -> None:
            seen.add(body)

        @farine.amqp.consume(exchange=exchange, routing_key="ints", queue=broker.queue("i"))
        async def ints(self, body: list[int] | None, message: Message) -> None:
            seen.add(body)

    async with running(Typed, config=broker.config()) as runtime:
        await publisher(runtime, exchange, "order")(Order(1, "bread"))
        await publisher(runtime, exchange, "point")(Point(2, 3))
        await publisher(runtime, exchange, "pair")({"a": 1, "b": "x"})
        await publisher(runtime, exchange, "ints")([1, 2])
        items = await seen.wait_for(4)
    assert Order(1, "bread") in items
    assert Point(2, 3) in items
    assert {"a": 1, "b": "x"} in items
    assert [1, 2] in items


async def test_bad_bodies_are_rejected_and_the_consumer_goes_on(
    broker: Broker, watch_log: Any
) -> None:
    exchange, dead_exchange = broker.exchange(), broker.exchange("dlx")
    queue = broker.queue()
    good, dead = Recorder(), Recorder()
    log = watch_log("bad body")

    class Strict:
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="rk",
            queue=queue,
            queue_arguments={"x-dead-letter-exchange": dead_exchange},
        )
        async def handle(self, body: Order, message: Message) -> None:
            good.add(body)

    class Dead:
        @farine.amqp.consume(exchange=dead_exchange, routing_key="rk", queue=broker.queue("dead"))
        async def dead_letters(self, body: Any, message: Message) -> None:
            dead.add(body)

    too_large = {"id": 1, "item": "x" * 5000}
    bad = [
        b"{not json",  # invalid JSON
        b'{"id": "one", "item": "x"}',  # wrong type
        b'{"id": 1, "item": "x", "note": ' + b"[" * 1200 + b"]" * 1200 + b"}",  # too deep
        msgspec.json.encode(too_large),  # larger than max_body_size
    ]
    config = broker.config("[strict]\nmax_body_size = 4096\n")
    async with running(Strict, Dead, config=config) as runtime:
        for body in bad:
            await publish_raw(runtime, exchange, "rk", body)
        await publisher(runtime, exchange)(Order(7, "ok"))
        assert await good.wait_for(1) == [Order(7, "ok")]
        # Rejected without requeue, so dead-lettered once (the dead-letter consumer
        # itself rejects the two that are not JSON it can decode).
        dead_letters = await dead.wait_for(2)
    assert sorted(map(str, dead_letters)) == sorted(
        map(str, [{"id": "one", "item": "x"}, too_large])
    )
    mine = [r.getMessage() for r in log.records if "strict.handle" in r.getMessage()]
    assert len(mine) == 4, mine
    reasons = " | ".join(mine)
    for reason in ("invalid JSON", "does not match", "nested too deeply", "exceeds max_body_size"):
        assert reason in reasons
    assert await broker.ready(queue) == 0


async def test_content_types_pick_the_format_and_unknown_ones_are_rejected(
    broker: Broker, watch_log: Any
) -> None:
    exchange = broker.exchange()
    seen = Recorder()
    log = watch_log("bad body", count=3)

    class Formats:
        @farine.amqp.consume(exchange=exchange, routing_key="order", queue=broker.queue("o"))
        async def order(self, body: Order, message: Message) -> None:
            seen.add(("order", body, message.properties.content_type))

        @farine.amqp.consume(exchange=exchange, routing_key="text", queue=broker.queue("t"))
        def text(self, body: str, message: Message) -> None:
            seen.add(("text", body, message.properties.content_type))

        @farine.amqp.consume(exchange=exchange, routing_key="blob", queue=broker.queue("b"))
        async def blob(self, body: bytes, message: Message) -> None:
            seen.add(("blob", body, message.properties.content_type))

        @farine.amqp.consume(exchange=exchange, routing_key="any", queue=broker.queue("a"))
        async def anything(self, body, message: Message) -> None:  # pyright: ignore[reportMissingParameterType, reportUnknownParameterType]
            seen.add(("any", body, message.properties.content_type))

    config = broker.config("[packed]\nserializer = msgpack\n")
    async with running(Formats, config=config) as runtime:
        assert runtime.config is not None
        packed = AsyncPublisher(exchange, "order", settings=runtime.config.service("packed"))
        await packed(Order(1, "bread"))
        await packed({"k": [1, 2]}, routing_key="any")
        raw = [
            ("order", b'{"id": 2, "item": "jam"}', "application/json; charset=utf-8", None),
            ("text", "caf\u00e9".encode("latin-1"), "text/plain; charset=latin-1", None),
            ("any", b"plain words", "text/plain", None),
            ("blob", b"\x00\x01", "application/octet-stream", "binary"),
            ("any", b"\x00\x02", "application/octet-stream", None),
            ("order", b"\x80\x04K\x01.", "application/x-python-serialize", None),  # pickle
            ("order", b'{"id": 3, "item": "x"}', "application/json", "gzip"),
            ("text", b"1", "application/json", None),  # a JSON number is no str
        ]
        connection = await get_connection(runtime.config.service("tests"))
        for key, body, content_type, encoding in raw:
            properties = Properties(content_type=content_type, content_encoding=encoding)
            await connection.publish(Outgoing(exchange, key, body, properties))
        items = await seen.wait_for(7)
        await log.wait()
    assert sorted(items, key=repr) == sorted(
        [
            ("order", Order(1, "bread"), "application/x-msgpack"),
            ("any", {"k": [1, 2]}, "application/x-msgpack"),
            ("order", Order(2, "jam"), "application/json; charset=utf-8"),
            ("text", "caf\u00e9", "text/plain; charset=latin-1"),
            ("any", "plain words", "text/plain"),
            ("blob", b"\x00\x01", "application/octet-stream"),
            ("any", b"\x00\x02", "application/octet-stream"),
        ],
        key=repr,
    )
    reasons = " | ".join(r.getMessage() for r in log.records)
    assert "unsupported content type 'application/x-python-serialize' for a Order body" in reasons
    assert "unsupported content encoding 'gzip'" in reasons
    assert "does not match str" in reasons


async def test_bytes_bodies_travel_as_they_are_and_json_base64_still_decodes_into_bytes(
    broker: Broker, watch_log: Any
) -> None:
    exchange = broker.exchange()
    seen = Recorder()
    log = watch_log("bad body")

    class Blobs:
        @farine.amqp.consume(exchange=exchange, routing_key="blob", queue=broker.queue("b"))
        async def blob(self, body: bytes, message: Message) -> None:
            properties = message.properties
            seen.add(("blob", body, message.body, properties.content_type,
                      properties.content_encoding))  # fmt: skip

        @farine.amqp.consume(exchange=exchange, routing_key="any", queue=broker.queue("a"))
        def anything(self, body, message: Message) -> None:  # pyright: ignore[reportMissingParameterType, reportUnknownParameterType]
            seen.add(("any", body, message.body, message.properties.content_type, None))

        @farine.amqp.consume(exchange=exchange, routing_key="order", queue=broker.queue("o"))
        async def order(self, body: Order, message: Message) -> None:
            seen.add(("order", body, message.body, None, None))

    payload = bytes(range(256)) * 4
    async with running(Blobs, config=broker.config()) as runtime:
        send = publisher(runtime, exchange, "blob")
        await send(payload)
        await send(bytearray(b"\x00array"), routing_key="any")
        await send(memoryview(b"\x00view"), routing_key="any")
        await send(b'{"id": 1, "item": "x"}', routing_key="order")  # raw, not JSON
        # An earlier farine published bytes as JSON: a base64 string.
        await send(b"\x00old")
        await publish_raw(runtime, exchange, "blob", b'"AG9sZA=="')
        items = await seen.wait_for(5)
        await log.wait()
    raw = ("application/data", "binary")
    assert sorted(items, key=repr) == sorted(
        [
            ("blob", payload, payload, *raw),
            ("any", b"\x00array", b"\x00array", raw[0], None),
            ("any", b"\x00view", b"\x00view", raw[0], None),
            ("blob", b"\x00old", b"\x00old", *raw),
            ("blob", b"\x00old", b'"AG9sZA=="', "application/json", None),
        ],
        key=repr,
    )
    [record] = log.records
    assert "unsupported content type 'application/data' for a Order body" in record.getMessage()
    assert "\n" not in record.getMessage()


async def test_the_test_apps_publish_sends_bytes_as_a_publisher_does(broker: Broker) -> None:
    exchange = broker.exchange()
    seen = Recorder()

    class Files:
        @farine.amqp.consume(exchange=exchange, routing_key="raw", queue=broker.queue())
        async def stored(self, body: bytes, message: Message) -> None:
            properties = message.properties
            seen.add((body, properties.content_type, properties.content_encoding))

    async with farine.testing.running(Files, config=broker.config()) as app:
        await app.publish(exchange, "raw", b"\x00\x01")
        await AsyncPublisher(exchange, "raw")(b"\x00\x01")
        items = await seen.wait_for(2)
    assert items == [(b"\x00\x01", "application/data", "binary")] * 2


async def test_retry_seed_requeues_once_then_rejects(broker: Broker) -> None:
    # baguette-messaging's rule, now asked for with Retry.seed() (the default retries
    # transient failures with backoff: tests/amqp/test_delivery.py).
    exchange, dead_exchange = broker.exchange(), broker.exchange("dlx")
    calls, dead = Recorder(), Recorder()

    class Failing:
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="rk",
            queue=broker.queue(),
            queue_arguments={"x-dead-letter-exchange": dead_exchange},
            retry=farine.amqp.Retry.seed(),
        )
        def handle(self, body: Any, message: Message) -> None:
            calls.add(message.redelivered)
            raise RuntimeError("boom")

        @farine.amqp.consume(exchange=dead_exchange, routing_key="rk", queue=broker.queue("dead"))
        async def dead_letters(self, body: Any, message: Message) -> None:
            dead.add(body)

    async with running(Failing, config=broker.config()) as runtime:
        await publisher(runtime, exchange)({"n": 1})
        assert await dead.wait_for(1) == [{"n": 1}]
    # Tried once, requeued once, then rejected (dead-lettered): exactly two calls.
    assert calls.items == [False, True]


async def test_manual_ack_nack_and_reject(broker: Broker) -> None:
    exchange, dead_exchange = broker.exchange(), broker.exchange("dlx")
    queue = broker.queue()
    seen, dead, errors = Recorder(), Recorder(), Recorder()

    class Manual:
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="rk",
            queue=queue,
            queue_arguments={"x-dead-letter-exchange": dead_exchange},
        )
        async def handle(self, body: Any, message: Message) -> None:
            seen.add((body["n"], message.redelivered))
            if body["n"] == 1 and not message.redelivered:
                message.nack()  # back to the queue
            elif body["n"] == 2:
                message.reject()  # dropped: dead-lettered
            else:
                message.ack()
            try:
                message.ack()
            except MessageStateError as exc:
                errors.add(str(exc))

        @farine.amqp.consume(exchange=dead_exchange, routing_key="rk", queue=broker.queue("dead"))
        async def dead_letters(self, body: Any, message: Message) -> None:
            dead.add(body)

    async with running(Manual, config=broker.config()) as runtime:
        await publisher(runtime, exchange)({"n": 1})
        await publisher(runtime, exchange)({"n": 2})
        await seen.wait_for(3)
        assert await dead.wait_for(1) == [{"n": 2}]
    assert sorted(seen.items) == [(1, False), (1, True), (2, False)]
    assert len(errors.items) == 3
    assert "already settled" in errors.items[0]
    assert await broker.ready(queue) == 0


async def test_topic_routing(broker: Broker) -> None:
    exchange = broker.exchange()
    one_word, any_tail = Recorder(), Recorder()

    class Topics:
        @farine.amqp.consume(exchange=exchange, routing_key="order.*", exchange_type="topic",
                             queue=broker.queue("star"))  # fmt: skip
        async def star(self, body: Any, message: Message) -> None:
            one_word.add(message.routing_key)

        @farine.amqp.consume(exchange=exchange, routing_key=["#.paid", "stock.#"],
                             exchange_type="topic", queue=broker.queue("hash"))  # fmt: skip
        async def hash_(self, body: Any, message: Message) -> None:
            any_tail.add(message.routing_key)

    keys = ["order.created", "order.eu.paid", "stock", "stock.low.eu", "other", "order.paid"]
    async with running(Topics, config=broker.config()) as runtime:
        for key in keys:
            await AsyncPublisher(
                exchange,
                key,
                exchange_type="topic",
                settings=runtime.config.service("t"),  # type: ignore[union-attr]
            ).send({}, mandatory=False)
        # "other" matches nothing; everything else is routed, some keys to both queues.
        await one_word.wait_for(2)
        await any_tail.wait_for(4)
    assert sorted(one_word.items) == ["order.created", "order.paid"]
    assert sorted(any_tail.items) == ["order.eu.paid", "order.paid", "stock", "stock.low.eu"]


async def test_fanout_routing_and_unroutable(broker: Broker) -> None:
    exchange = broker.exchange()
    first, second = Recorder(), Recorder()

    class Fanout:
        @farine.amqp.consume(exchange=exchange, exchange_type="fanout", queue=broker.queue("a"))
        async def a(self, body: Any, message: Message) -> None:
            first.add(body)

        @farine.amqp.consume(exchange=exchange, exchange_type="fanout", queue=broker.queue("b"))
        def b(self, body: Any, message: Message) -> None:
            second.add(body)

    async with running(Fanout, config=broker.config()) as runtime:
        settings = broker.settings(runtime)
        await AsyncPublisher(exchange, "any-key", exchange_type="fanout", settings=settings)(
            {"x": 1}
        )
        assert await first.wait_for(1) == [{"x": 1}]
        assert await second.wait_for(1) == [{"x": 1}]
        lonely = broker.exchange("lonely")
        with pytest.raises(UnroutableError, match="unroutable"):
            await AsyncPublisher(lonely, "nowhere", settings=settings)({"x": 2})


async def test_prefetch_is_respected(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    started = Recorder()
    release = anyio.Event()
    running_now = 0
    peak = 0

    class Slow:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, prefetch=2)
        async def handle(self, body: Any, message: Message) -> None:
            nonlocal running_now, peak
            running_now += 1
            peak = max(peak, running_now)
            started.add(body["n"])
            await release.wait()
            running_now -= 1

    async with running(Slow, config=broker.config()) as runtime:
        for n in range(5):
            await publisher(runtime, exchange)({"n": n})
        await started.wait_for(2)
        # Two in flight, and the broker holds the other three back.
        assert await broker.ready(queue) == 3
        assert len(started.items) == 2
        release.set()
        await started.wait_for(5)
    assert peak == 2
    assert sorted(started.items) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["async", "def"])
async def test_acks_out_of_order_never_settle_a_message_still_running(
    broker: Broker, kind: str
) -> None:
    # Acks of the oldest deliveries may go to the broker as one `multiple` ack: it must
    # never cover a message whose handler still runs, nor one that is nacked later.
    exchange, queue = broker.exchange(), broker.queue()
    seen, held = Recorder(), Recorder()
    release = threading.Event()

    def decide(body: Any, message: Message) -> bool:
        """Record the message; True when the handler must hold it, then nack it."""
        seen.add((body["n"], message.redelivered))
        return body["n"] % 2 == 0 and not message.redelivered

    class Hold:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, prefetch=10)
        async def handle(self, body: Any, message: Message) -> None:
            if decide(body, message):
                held.add(body["n"])
                await anyio.to_thread.run_sync(release.wait)
                message.nack(requeue=True)

    class HoldSync:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, prefetch=10)
        def handle(self, body: Any, message: Message) -> None:
            if decide(body, message):
                held.add(body["n"])
                release.wait()
                message.nack(requeue=True)

    try:
        async with running(Hold if kind == "async" else HoldSync, config=broker.config()) as rt:
            for n in range(10):
                await publisher(rt, exchange)({"n": n})
            await held.wait_for(5)
            await seen.wait_for(10)
            # A round trip to the broker: the odd messages' acks have been flushed by now.
            assert await broker.ready(queue) == 0
            release.set()
            await seen.wait_for(15)
    finally:
        release.set()
    assert sorted(seen.items) == sorted(
        [(n, False) for n in range(10)] + [(n, True) for n in range(0, 10, 2)]
    )
    assert await broker.ready(queue) == 0


async def test_a_cancelled_publish_leaves_the_connection_usable(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    seen = Recorder()

    class Sink:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(body["n"])

    async with running(Sink, config=broker.config()) as runtime:
        publish = publisher(runtime, exchange)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await publish({"n": 0})  # cancelled before it starts
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish, {"n": 1})
            await anyio.wait_all_tasks_blocked()  # now waiting for its confirm
            tg.cancel_scope.cancel()
        await publish({"n": 2})
        with anyio.fail_after(15):
            while 2 not in seen.items:
                await seen.wait_for(len(seen.items) + 1)
    # The cancelled ones may or may not have reached the broker; the next one did.
    assert 2 in seen.items
    assert set(seen.items) <= {0, 1, 2}
