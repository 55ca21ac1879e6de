"""baguette-messaging 0.19's consumer topology and kombu's message attributes.

On memory:// and RabbitMQ, on both backends. The real seed declaring the same names side by
side is tested in tests/interop/test_seed_interop.py.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import pytest

import farine.amqp
import farine.rpc
import farine.testing
from farine.amqp import AsyncPublisher, Message
from farine.exceptions import ConfigurationError
from farine.settings import Config
from tests.amqp import _rabbit
from tests.amqp.conftest import Broker, Recorder, running

if TYPE_CHECKING:
    from farine.runtime import Runtime

pytestmark = pytest.mark.anyio


def publisher(runtime: Runtime, exchange: str, routing_key: str) -> AsyncPublisher:
    assert runtime.config is not None
    return AsyncPublisher(exchange, routing_key, settings=runtime.config.service("tests"))


def service_name(broker: Broker) -> str:
    """A service name of this test: its default exchange and queue are removed after it."""
    name = f"seedtopo{uuid.uuid4().hex[:10]}"
    broker.exchanges.append(name)
    broker.queues.append(name)
    return name


async def test_the_queue_is_named_after_the_routing_key(broker: Broker) -> None:
    exchange, key = broker.exchange(), broker.queue("rk")

    class Consume:
        @farine.amqp.consume(exchange=exchange, routing_key=key)
        async def handle(self, body: Any, message: Message) -> None:
            pass

    async with farine.testing.running(Consume, config=broker.config()) as app:
        await app.publish(exchange, key, {"n": 1})
        [call] = await app.wait_for("consume.handle")
    assert call.body == {"n": 1}
    assert await broker.ready(key) == 0  # the queue `key` exists, and was drained


async def test_without_routing_key_exchange_queue_and_binding_are_the_service(
    broker: Broker,
) -> None:
    name = service_name(broker)

    async def handle(self: object, body: Any, message: Message) -> None:
        pass

    service = type(name.capitalize(), (), {"handle": farine.amqp.consume()(handle)})
    async with farine.testing.running(service, config=broker.config()) as app:
        # What a seed publisher sends by default: exchange and key both the service name
        # (mandatory: unroutable would raise).
        await app.publish(name, name, {"n": 1})
        [call] = await app.wait_for(f"{name}.handle")
    assert call.message is not None
    assert (call.body, call.message.exchange, call.message.routing_key) == ({"n": 1}, name, name)
    assert await broker.ready(name) == 0


async def test_services_consuming_one_routing_key_share_its_queue(broker: Broker) -> None:
    exchange, key = broker.exchange(), broker.queue("shared")
    seen = Recorder()

    class First:
        @farine.amqp.consume(exchange=exchange, routing_key=key)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(("first", body["n"]))

    class Second:
        @farine.amqp.consume(exchange=exchange, routing_key=key)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(("second", body["n"]))

    async with running(First, Second, config=broker.config()) as runtime:
        for n in range(20):
            await publisher(runtime, exchange, key)({"n": n})
        await seen.wait_for(20)
        # Competing consumers of one queue: each message once, whichever service took it.
        assert sorted(n for _, n in seen.items) == list(range(20))
        assert await broker.ready(key) == 0
    assert len(seen.items) == 20


async def test_a_queue_per_service_gets_a_copy_each(broker: Broker) -> None:
    exchange = broker.exchange()
    first_queue, second_queue = broker.queue("first"), broker.queue("second")

    class First:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=first_queue)
        async def handle(self, body: Any, message: Message) -> None:
            pass

    class Second:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=second_queue)
        async def handle(self, body: Any, message: Message) -> None:
            pass

    async with farine.testing.running(First, Second, config=broker.config()) as app:
        await app.publish(exchange, "rk", {"n": 1})
        [first] = await app.wait_for("first.handle")
        [second] = await app.wait_for("second.handle")
    assert first.body == second.body == {"n": 1}


async def test_the_consumer_exchange_is_direct_whatever_the_type_setting(
    broker: Broker,
) -> None:
    exchange, key = broker.exchange(), broker.queue("rk")

    class Consume:
        @farine.amqp.consume(exchange=exchange, routing_key=key)
        async def handle(self, body: Any, message: Message) -> None:
            pass

    # `type` is the publishers' setting, as in the seed: the consumer still declares
    # `direct`, and a direct publisher reaches it (a topic one would fail to declare).
    async with farine.testing.running(Consume, config=broker.config(type="topic")) as app:
        direct = AsyncPublisher(exchange, key, exchange_type="direct", service="tests")
        await direct({"n": 1})
        [call] = await app.wait_for("consume.handle")
    assert call.body == {"n": 1}


async def test_messages_have_kombus_attributes(broker: Broker) -> None:
    exchange, key = broker.exchange(), broker.queue("rk")
    seen = Recorder()

    class Consume:
        @farine.amqp.consume(exchange=exchange, routing_key=key)
        def handle(self, body: Any, message: Message) -> None:
            seen.add(
                {
                    "payload": message.payload,
                    "decode": message.decode(),
                    "body": message.body,
                    "content_type": message.content_type,
                    "content_encoding": message.content_encoding,
                    "headers": dict(message.headers),
                    "delivery_info": message.delivery_info,
                    "properties": dict(message.properties),
                    "reply_to": message.properties["reply_to"],
                    "get": message.properties.get("priority", "unset"),
                    "attribute": message.properties.correlation_id,
                    "acknowledged": message.acknowledged,
                }
            )
            message.ack()
            seen.add(message.acknowledged)

    async with running(Consume, config=broker.config()) as runtime:
        await publisher(runtime, exchange, key)(
            {"a": [1, "x"]}, headers={"h": "v"}, correlation_id="c-1", reply_to="r-q"
        )
        got, acknowledged = await seen.wait_for(2)
    properties = got.pop("properties")
    # farine's publisher also sets these two; kombu's dict has the timestamp in seconds.
    assert isinstance(properties.pop("message_id"), str)
    assert isinstance(properties.pop("timestamp"), int)
    assert properties == {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "application_headers": {"h": "v"},
        "delivery_mode": 2,
        "correlation_id": "c-1",
        "reply_to": "r-q",
    }
    info = got.pop("delivery_info")
    assert info["exchange"] == exchange
    assert info["routing_key"] == key
    assert info["redelivered"] is False
    assert isinstance(info["delivery_tag"], int)
    assert set(info) == {"consumer_tag", "delivery_tag", "redelivered", "exchange", "routing_key"}
    assert got == {
        "payload": {"a": [1, "x"]},
        "decode": {"a": [1, "x"]},
        "body": b'{"a":[1,"x"]}',
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": {"h": "v"},
        "reply_to": "r-q",
        "get": "unset",
        "attribute": "c-1",
        "acknowledged": False,
    }
    assert acknowledged is True


async def test_payload_follows_the_content_type(broker: Broker) -> None:
    exchange, key = broker.exchange(), broker.queue("rk")

    class Consume:
        @farine.amqp.consume(exchange=exchange, routing_key=key)
        async def handle(self, body: Any, message: Message) -> None:
            pass

    async with farine.testing.running(Consume, config=broker.config()) as app:
        await app.publish(exchange, key, b"plain text", content_type="text/plain")
        await app.publish(exchange, key, b"\x00\x01", content_type="application/octet-stream")
        calls = await app.wait_for("consume.handle", count=2)
    items = [(call.message.content_type, call.message.payload) for call in calls if call.message]
    assert sorted(items) == [
        ("application/octet-stream", b"\x00\x01"),
        ("text/plain", "plain text"),
    ]


async def test_several_routing_keys_share_a_queue_named_after_the_service(
    broker: Broker,
) -> None:
    name = service_name(broker)
    exchange = broker.exchange()

    async def handle(self: object, body: Any, message: Message) -> None:
        pass

    consumer = farine.amqp.consume(exchange=exchange, routing_key=["a", "b"])(handle)
    service = type(name.capitalize(), (), {"handle": consumer})
    async with farine.testing.running(service, config=broker.config()) as app:
        await app.publish(exchange, "a", {"n": 1})
        await app.publish(exchange, "b", {"n": 2})
        calls = await app.wait_for(f"{name}.handle", count=2)
    seen = [(call.message.routing_key, call.body) for call in calls if call.message]
    assert sorted(seen) == [("a", {"n": 1}), ("b", {"n": 2})]
    assert await broker.ready(name) == 0  # the queue named after the service


async def test_two_consumers_of_one_default_queue_with_other_bindings_are_refused(
    broker: Broker,
) -> None:
    first, second = broker.exchange("first"), broker.exchange("second")

    class Twice:
        @farine.amqp.consume(exchange=first, routing_key="rk")
        async def one(self, body: Any, message: Message) -> None: ...

        @farine.amqp.consume(exchange=second, routing_key="rk")
        async def other(self, body: Any, message: Message) -> None: ...

    with pytest.RaisesGroup(
        pytest.RaisesExc(ConfigurationError, match="default queue 'rk' with other bindings"),
        flatten_subgroups=True,
    ):
        async with running(Twice, config=broker.config()):
            pass


@pytest.mark.rabbitmq
async def test_an_rpc_services_exchange_is_never_auto_deleted(anyio_backend: str) -> None:
    """baguette-messaging 0.19 declared it so, whatever `auto_delete` says."""
    name = f"seedrpc{uuid.uuid4().hex[:10]}"
    vhost = urlsplit(_rabbit.RABBITMQ_URI).path.lstrip("/") or "/"

    async def ping(self: object) -> str:
        return "pong"

    service = type(name.capitalize(), (), {"ping": farine.rpc.method()(ping)})
    config = Config.from_string(
        f"[DEFAULT]\namqp_uri = {_rabbit.RABBITMQ_URI}\nauto_delete = true\n"
    )
    try:
        async with running(service, config=config):
            done = await anyio.run_process(
                ["rabbitmqctl", "-q", "list_exchanges", "-p", vhost, "name", "auto_delete",
                 "--no-table-headers"],
                check=True,
            )  # fmt: skip
        flags = dict(line.split("\t") for line in done.stdout.decode().splitlines() if line)
        assert flags[name] == "false"
    finally:
        await _rabbit.delete(queues=[f"{name}__ping"], exchanges=[name])
