"""AsyncAPI documents tell the truth: messages sent where a document says arrive, and
the replies of a real server match its reply messages (memory:// and RabbitMQ, both
backends)."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

import farine.amqp
import farine.rpc
from farine._broker import get_broker
from farine.amqp import AsyncPublisher
from farine.asyncapi._document import describe_services
from farine.discovery import ServiceDefinition, find_entrypoints
from tests.amqp import _rabbit
from tests.amqp.conftest import Broker, Recorder, running
from tests.asyncapi._validate import assert_valid, payload_errors

if TYPE_CHECKING:
    from collections.abc import Iterator

    from farine.settings import Config

pytestmark = pytest.mark.anyio


class Parcel(msgspec.Struct):
    id: int


def document_of(config: Config, *classes: type) -> dict[str, Any]:
    services = [ServiceDefinition(cls, "tests", find_entrypoints(cls)) for cls in classes]
    document = describe_services(services, config=config, title="truth", version="1")
    assert_valid(document)
    return document


async def queue_exists(broker: Broker, queue: str) -> bool:
    if broker.is_memory:
        return get_broker(broker.uri).has_queue(queue)
    await _rabbit.queue_counts(queue)  # a passive declare: fails when there is no such queue
    return True


async def test_consumers_receive_what_is_sent_where_the_document_says(broker: Broker) -> None:
    exchange = broker.exchange()
    typed_queue = broker.queue("typed")
    key = broker.queue("key")  # one routing key: the queue is named after it
    seen = Recorder()

    class Truth:
        @farine.amqp.consume(
            exchange=exchange, routing_key=["a.x", "b.*"], exchange_type="topic", queue=typed_queue
        )
        async def typed(self, body: Parcel, message: farine.amqp.Message) -> None:
            seen.add(("typed", message.routing_key, body.id))

        @farine.amqp.consume(exchange=exchange, routing_key=key, exchange_type="topic")
        async def untyped(self, body: Any, message: farine.amqp.Message) -> None:
            seen.add(("untyped", message.routing_key, body))

    config = broker.config()
    document = document_of(config, Truth)
    expected: list[tuple[str, str, Any]] = []
    async with running(Truth, config=config) as runtime:
        for name in ("truth.typed", "truth.untyped"):
            channel = document["channels"][name]
            assert await queue_exists(broker, channel["address"])
            bound = channel["bindings"]["amqp"]["x-farine-exchange"]
            payload = channel["messages"]["body"]["payload"]
            publisher = AsyncPublisher(
                bound["name"], exchange_type=bound["type"], settings=broker.settings(runtime)
            )
            for binding_key in document["operations"][name]["bindings"]["amqp"]["cc"]:
                routing_key = binding_key.replace("*", "y")  # a key the pattern matches
                body = {"id": len(expected)}
                assert payload_errors(document, payload, body) == []
                await publisher(body, routing_key=routing_key)
                what = name.removeprefix("truth.")
                expected.append((what, routing_key, body["id"] if what == "typed" else body))
        assert sorted(await seen.wait_for(len(expected)), key=repr) == sorted(expected, key=repr)


@pytest.mark.rabbitmq
async def test_replies_of_a_server_match_the_reply_messages(rabbitmq: Broker) -> None:
    class Methods:
        @farine.rpc.method()
        def quote(self, parcel: Parcel, times: int = 1) -> list[Parcel]:
            return [parcel] * times

        @farine.rpc.method()
        def count(self, n: int) -> Iterator[int]:
            yield from range(n)

        @farine.rpc.method()
        def fail(self) -> None:
            raise ValueError("no")

    unique_service = f"truth{uuid.uuid4().hex[:10]}"
    service = type(unique_service, (Methods,), {})
    calls: list[tuple[str, list[Any]]] = [("quote", [{"id": 7}, 2]), ("count", [3]), ("fail", [])]
    rabbitmq.queues.extend(f"{unique_service}__{method}" for method, _ in calls)
    rabbitmq.exchanges.append(unique_service)
    config = rabbitmq.config()
    document = document_of(config, service)
    replies: dict[str, list[dict[str, Any]]] = {}
    async with running(service, config=config):
        for method, args in calls:
            channel = document["channels"][f"{unique_service}.{method}"]
            # The seed's caller publishes where the document says requests go.
            assert channel["address"] == f"{unique_service}__{method}"
            assert channel["bindings"]["amqp"]["x-farine-exchange"]["name"] == unique_service
            request: dict[str, Any] = {"args": args, "kwargs": {}}
            payload = channel["messages"]["request"]["payload"]
            assert payload_errors(document, payload, request) == []
            with anyio.fail_after(30):
                replies[method] = await _rabbit.seed_call(
                    unique_service, method, json.dumps(request).encode()
                )
    for method, expected in (
        ("quote", ["result", "end"]),
        ("count", ["item", "item", "item", "end"]),
        ("fail", ["error"]),
    ):
        reply_channel = document["channels"][f"{unique_service}.{method}.reply"]
        messages: dict[str, Any] = reply_channel["messages"]
        kinds: list[str] = []
        for reply in replies[method]:
            matching = [
                kind
                for kind, message in messages.items()
                if not payload_errors(document, resolve(document, message)["payload"], reply)
            ]
            assert len(matching) == 1, (method, reply, matching)
            kinds.append(matching[0])
        assert kinds == expected, method


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = document
    for part in str(ref).removeprefix("#/").split("/"):
        target = target[part]
    return target
