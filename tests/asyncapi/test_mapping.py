"""How each entrypoint maps to AsyncAPI, part by part (tests/asyncapi/shop is the service)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final, cast

import msgspec
import pytest

from farine.asyncapi import build_document
from farine.asyncapi._schemas import to_draft7
from farine.exceptions import ConfigurationError
from farine.rpc._protocol import END, Control, encode_error, encode_item, encode_request
from farine.settings import Config
from tests.asyncapi._validate import assert_valid, payload_errors
from tests.asyncapi.shop.service import Cancelled, Order, Shipped

DEFAULTS: Final = Config.from_string("")
ROOT: Final = Path(__file__).parent.parent.parent


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    found = build_document("tests.asyncapi.shop", config=DEFAULTS)
    assert_valid(found)
    return found


def resolve(document: dict[str, Any], node: Any) -> Any:
    """Follow a local `$ref` (one level)."""
    if not isinstance(node, dict):
        return node
    ref = cast(dict[str, Any], node).get("$ref")
    if ref is None:
        return cast(dict[str, Any], node)
    target: Any = document
    for part in str(ref).removeprefix("#/").split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def message(document: dict[str, Any], channel: str, name: str) -> dict[str, Any]:
    return resolve(document, document["channels"][channel]["messages"][name])


def wire(data: bytes) -> Any:
    return json.loads(data)


# -- consumers -------------------------------------------------------------------------


def test_a_consumer_receives_from_its_queue_bound_to_its_exchange(
    document: dict[str, Any],
) -> None:
    channel = document["channels"]["shop.on_order"]
    assert channel["address"] == "shop-orders"
    amqp = channel["bindings"]["amqp"]
    assert amqp["is"] == "queue"
    assert amqp["queue"] == {
        "name": "shop-orders", "durable": True, "exclusive": False, "autoDelete": False
    }  # fmt: skip
    assert amqp["x-farine-exchange"] == {
        "name": "orders", "type": "topic", "durable": True, "autoDelete": False
    }  # fmt: skip
    assert amqp["x-farine-queue-arguments"] == {"x-dead-letter-exchange": "dead"}
    operation = document["operations"]["shop.on_order"]
    assert operation["action"] == "receive"
    assert operation["channel"] == {"$ref": "#/channels/shop.on_order"}
    assert operation["messages"] == [{"$ref": "#/channels/shop.on_order/messages/body"}]
    assert operation["bindings"]["amqp"]["cc"] == ["order.created", "order.updated"]
    assert operation["summary"] == "Record an order."
    assert operation["tags"] == [{"name": "shop"}]


def test_a_consumer_without_routing_key_uses_the_seed_defaults(document: dict[str, Any]) -> None:
    # baguette-messaging 0.19: exchange, queue and binding key are the service's name.
    channel = document["channels"]["shop.on_anything"]
    assert channel["address"] == "shop"
    assert channel["bindings"]["amqp"]["x-farine-exchange"]["name"] == "shop"
    assert channel["bindings"]["amqp"]["x-farine-exchange"]["type"] == "direct"
    assert document["operations"]["shop.on_anything"]["bindings"]["amqp"]["cc"] == ["shop"]
    # One routing key: the queue is named after it.
    assert document["channels"]["shop.on_event"]["address"] == "order.event"


def test_typed_bodies_have_their_msgspec_schema(document: dict[str, Any]) -> None:
    body = message(document, "shop.on_order", "body")
    assert body["title"] == "Order"
    assert body["payload"] == {"$ref": "#/components/schemas/Order"}
    order = document["components"]["schemas"]["Order"]
    assert order["required"] == ["id", "item"]
    # A tuple, in AsyncAPI's (draft 07) form rather than 2020-12's prefixItems.
    assert order["properties"]["size"]["items"] == [{"type": "integer"}, {"type": "string"}]
    assert order["properties"]["size"]["additionalItems"] is False
    assert "prefixItems" not in json.dumps(document)
    ok = msgspec.json.encode(Order(1, "tea"))
    assert payload_errors(document, body["payload"], wire(ok)) == []
    assert payload_errors(document, body["payload"], {"id": "one", "item": "tea"}) != []


def test_a_tagged_union_names_its_tag_property(document: dict[str, Any]) -> None:
    payload = message(document, "shop.on_event", "body")["payload"]
    assert payload["discriminator"] == "type"  # AsyncAPI's form: the property's name
    for value in (Shipped(1), Cancelled(2, "late")):
        assert payload_errors(document, payload, wire(msgspec.json.encode(value))) == []
    assert payload_errors(document, payload, {"type": "Lost", "order": 1}) != []


def test_unannotated_bodies_are_open_objects_and_dicts_objects(document: dict[str, Any]) -> None:
    anything = message(document, "shop.on_anything", "body")["payload"]
    assert anything["type"] == "object"
    assert anything["additionalProperties"] is True
    # A body named otherwise (`counts`) is typed as well: it is the first parameter.
    mapping = message(document, "shop.on_mapping", "body")["payload"]
    assert mapping == {"type": "object", "additionalProperties": {"type": "integer"}}


# -- publishers ------------------------------------------------------------------------


def test_publish_decorators_are_send_operations_on_routing_keys(document: dict[str, Any]) -> None:
    # Stacked: the inner decorator first.
    stock = document["channels"]["shop.restock.publish"]
    assert stock["address"] == "shop"  # the default routing key: the service's name
    assert stock["bindings"]["amqp"] == {
        "is": "routingKey",
        "exchange": {"name": "stock", "type": "direct", "durable": True, "autoDelete": False},
        "bindingVersion": "0.3.0",
    }
    orders = document["channels"]["shop.restock.publish.2"]
    assert orders["address"] is None  # several routing keys: one publish per key
    assert orders["bindings"]["amqp"]["exchange"]["name"] == "orders"
    operation = document["operations"]["shop.restock.publish.2"]
    assert operation["action"] == "send"
    assert operation["bindings"]["amqp"]["cc"] == ["order.created", "order.updated"]
    assert operation["bindings"]["amqp"]["deliveryMode"] == 2
    payload = message(document, "shop.restock.publish", "body")["payload"]
    assert payload["type"] == "object"
    assert payload["additionalProperties"] is True


def test_a_publisher_attribute_is_a_send_operation(document: dict[str, Any]) -> None:
    channel = document["channels"]["shop.audit.publish"]
    assert channel["bindings"]["amqp"]["exchange"]["type"] == "fanout"
    assert channel["bindings"]["amqp"]["exchange"]["name"] == "audit"
    assert document["operations"]["shop.audit.publish"]["bindings"]["amqp"]["cc"] == [
        "orders",
        "all",
    ]


def test_the_exchange_type_of_publishers_follows_the_type_setting() -> None:
    config = Config.from_string("[shop]\ntype = topic\n")
    document = build_document("tests.asyncapi.shop", config=config)
    exchange = document["channels"]["shop.restock.publish"]["bindings"]["amqp"]["exchange"]
    assert exchange["type"] == "topic"


# -- RPC -------------------------------------------------------------------------------


def test_an_rpc_method_receives_requests_and_replies_to_reply_to(document: dict[str, Any]) -> None:
    request = document["channels"]["shop.quote"]
    assert request["address"] == "shop__quote"
    assert request["bindings"]["amqp"]["queue"]["name"] == "shop__quote"
    assert request["bindings"]["amqp"]["x-farine-exchange"]["name"] == "shop"
    operation = document["operations"]["shop.quote"]
    assert operation["action"] == "receive"
    assert operation["bindings"]["amqp"]["cc"] == ["shop__quote"]
    reply = operation["reply"]
    assert reply["address"]["location"] == "$message.header#/reply_to"
    assert "amq.rabbitmq.reply-to" in reply["address"]["description"]
    assert reply["channel"] == {"$ref": "#/channels/shop.quote.reply"}
    assert reply["messages"] == [
        {"$ref": f"#/channels/shop.quote.reply/messages/{name}"}
        for name in ("result", "end", "error")
    ]
    channel = document["channels"]["shop.quote.reply"]
    assert channel["address"] is None  # the reply address is the request's
    assert channel["bindings"]["amqp"]["queue"]["name"] == "amq.rabbitmq.reply-to"
    for name in ("request",):
        assert message(document, "shop.quote", name)["correlationId"]["location"] == (
            "$message.header#/correlation_id"
        )


def test_declared_errors_are_listed_with_the_schemas_of_their_args(
    document: dict[str, Any],
) -> None:
    assert document["operations"]["shop.quote"]["x-farine-errors"] == [
        {
            "type": "SoldOut",
            "summary": "Not enough of an item left.",
            "args": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
        }
    ]
    assert "x-farine-errors" not in document["operations"]["shop.tally"]


def test_rpc_arguments_are_the_seed_envelope_of_typed_parameters(document: dict[str, Any]) -> None:
    payload = message(document, "shop.quote", "request")["payload"]
    args = payload["properties"]["args"]
    kwargs = payload["properties"]["kwargs"]
    assert args["items"] == [{"$ref": "#/components/schemas/Order"}, {"type": "integer"}]
    assert args["additionalItems"] is False
    # A keyword-only parameter is named only.
    assert set(kwargs["properties"]) == {"order", "quantity", "coupon"}
    assert kwargs["additionalProperties"] is False
    assert "Required, by position or by name: `order`." in payload["description"]
    by_position = encode_request((Order(1, "tea"), 3), {})
    by_name = encode_request((), {"order": Order(1, "tea"), "coupon": "X"})
    for request in (by_position, by_name):
        assert payload_errors(document, payload, wire(request)) == []
    assert payload_errors(document, payload, wire(encode_request((1, 2, 3), {}))) != []
    assert payload_errors(document, payload, wire(encode_request((), {"nope": 1}))) != []


def test_var_positional_and_keyword_parameters(document: dict[str, Any]) -> None:
    payload = message(document, "shop.tally", "request")["payload"]
    assert payload["properties"]["args"]["items"] == {"type": "integer"}
    assert payload["properties"]["kwargs"]["additionalProperties"] == {"type": "string"}
    assert payload_errors(document, payload, wire(encode_request((1, 2), {"a": "b"}))) == []
    assert payload_errors(document, payload, wire(encode_request(("x",), {}))) != []
    # A static method has no `self` to leave out.
    echo = message(document, "shop.echo", "request")["payload"]
    assert echo["properties"]["args"]["items"] == [{"type": "string"}]
    # Positional-only parameters cannot be named.
    positions = message(document, "shop.positions", "request")["payload"]
    assert set(positions["properties"]["kwargs"]["properties"]) == {"b"}


def test_untyped_rpc_methods_take_and_return_any_json(document: dict[str, Any]) -> None:
    payload = message(document, "shop.letters", "request")["payload"]
    assert payload["properties"]["args"]["items"] == {}
    assert payload["properties"]["kwargs"]["additionalProperties"] == {}
    item = message(document, "shop.letters.reply", "item")["payload"]
    assert item["properties"]["body"] == {}


def test_the_result_and_the_end_marker_are_told_apart(document: dict[str, Any]) -> None:
    result = message(document, "shop.quote.reply", "result")["payload"]
    end = message(document, "shop.quote.reply", "end")["payload"]
    error = message(document, "shop.quote.reply", "error")["payload"]
    assert result["properties"]["body"] == {"$ref": "#/components/schemas/Receipt"}
    value = {"order": 1, "total": 2.5}
    replies = [
        ("result", encode_item(value)),
        ("result", encode_item(value, end=True)),  # a unary caller's: the end folded in
        ("end", END),
        ("error", encode_error(ValueError("no"), send_traceback=False)),
        ("error", encode_error(ValueError("no"), send_traceback=True)),
    ]
    # Every reply matches exactly one of the three messages (AsyncAPI requires it).
    for expected, reply in replies:
        matches = [
            name
            for name, schema in (("result", result), ("end", end), ("error", error))
            if not payload_errors(document, schema, wire(reply))
        ]
        assert matches == [expected], reply
    assert payload_errors(document, result, wire(encode_item({"order": "x"}))) != []


def test_a_stream_is_a_sequence_of_items_then_the_end_marker(document: dict[str, Any]) -> None:
    operation = document["operations"]["shop.follow"]
    assert operation["reply"]["messages"] == [
        {"$ref": f"#/channels/shop.follow.reply/messages/{name}"}
        for name in ("item", "end", "error")
    ]
    assert operation["x-farine-stream"] == {
        "items": {"$ref": "#/channels/shop.follow.reply/messages/item"},
        "end": {"$ref": "#/channels/shop.follow.reply/messages/end"},
    }
    item = message(document, "shop.follow.reply", "item")
    # `-> AsyncIterator[Shipped | Cancelled]`: each item is one of them.
    assert item["payload"]["properties"]["body"]["anyOf"] == [
        {"$ref": "#/components/schemas/Shipped"},
        {"$ref": "#/components/schemas/Cancelled"},
    ]
    assert "x-farine-control" in item["headers"]["properties"]
    for value in (Shipped(1), Cancelled(1, "late")):
        assert payload_errors(document, item["payload"], wire(encode_item(value))) == []
    end = message(document, "shop.follow.reply", "end")["payload"]
    assert payload_errors(document, item["payload"], wire(END)) != []
    assert payload_errors(document, end, wire(END)) == []


def test_a_generator_annotated_under_type_checking_is_a_typed_stream() -> None:
    # `-> Iterator[int]` with `Iterator` imported under TYPE_CHECKING only.
    document = build_document("tests.apps.rpcapp", config=DEFAULTS)
    item = message(document, "rpcapp.count.reply", "item")["payload"]
    assert item["properties"]["body"] == {"type": "integer"}
    assert "rpcapp.count.control" in document["operations"]
    assert "rpcapp.add.control" not in document["operations"]


def test_a_stream_has_a_control_channel_for_cancels_and_credits(document: dict[str, Any]) -> None:
    channel = document["channels"]["shop.follow.control"]
    assert channel["address"] is None  # named by the first reply's x-farine-control header
    assert channel["bindings"]["amqp"]["queue"]["exclusive"] is True
    assert document["operations"]["shop.follow.control"]["action"] == "receive"
    payload = message(document, "shop.follow.control", "control")["payload"]
    for order in (Control(cancel="c1"), Control(credit="c1", read=128)):
        assert payload_errors(document, payload, wire(msgspec.json.encode(order))) == []
    assert payload_errors(document, payload, {"read": "many"}) != []


def test_the_error_envelope(document: dict[str, Any]) -> None:
    error = document["components"]["messages"]["rpcError"]
    assert error["payload"]["required"] == ["__except__"]
    info = resolve(document, error["payload"]["properties"]["error"])
    assert info["required"] == ["type", "message"]
    reply = wire(encode_error(KeyError("x"), send_traceback=False, data={"sku": 1}))
    assert payload_errors(document, error["payload"], reply) == []
    assert payload_errors(document, error["payload"], {"error": {"type": "E"}}) != []


# -- SSE, servers, execute -------------------------------------------------------------


def test_an_sse_listener_receives_from_its_endpoint_without_its_secrets(
    document: dict[str, Any],
) -> None:
    channel = document["channels"]["feed.on_tick"]
    assert channel["address"] == "/events"
    server = resolve(document, channel["servers"][0])
    assert server["host"] == "feed.example:8443"
    assert server["protocol"] == "https"
    assert message(document, "feed.on_tick", "event")["payload"] == {
        "$ref": "#/components/schemas/Tick"
    }
    assert "`tick`" in channel["description"]
    text = json.dumps(document)
    for secret in ("s3cret", "t0ken", "frag", "user:"):
        assert secret not in text


def test_an_sse_endpoint_from_the_settings() -> None:
    config = Config.from_string("[feed]\nendpoint = http://127.0.0.1:8000/stream\n")
    document = build_document("tests.asyncapi.shop", config=config)
    channel = document["channels"]["feed.on_setting"]
    assert channel["address"] == "/stream"
    assert resolve(document, channel["servers"][0])["host"] == "127.0.0.1:8000"
    unset = build_document("tests.asyncapi.shop", config=DEFAULTS)["channels"]["feed.on_setting"]
    assert unset["address"] is None


def test_amqp_servers_come_from_amqp_uri_without_credentials() -> None:
    config = Config.from_string(
        "[DEFAULT]\namqp_uri = amqp://bob:pa55word@rabbit.example:5673/shop%2Fprod\n"
    )
    document = build_document("tests.asyncapi.shop", config=config)
    assert_valid(document)
    assert document["servers"]["rabbitmq"]["host"] == "rabbit.example:5673"
    assert document["servers"]["rabbitmq"]["protocol"] == "amqp"
    channel = document["channels"]["shop.on_order"]
    assert channel["servers"] == [{"$ref": "#/servers/rabbitmq"}]
    assert channel["bindings"]["amqp"]["queue"]["vhost"] == "shop/prod"
    assert "pa55word" not in json.dumps(document)
    assert "bob" not in json.dumps(document)


def test_a_memory_broker_is_no_server(document: dict[str, Any]) -> None:
    assert "rabbitmq" not in document.get("servers", {})
    assert "servers" not in document["channels"]["shop.on_order"]


def test_execute_methods_are_listed_in_the_description(document: dict[str, Any]) -> None:
    description = document["info"]["description"]
    assert "runs `restock` (long-running, no messages of its own)" in description
    assert "serves over RPC `quote`, `tally`, `follow` (a stream)" in description
    assert not any(name.startswith("shop.restock") and "publish" not in name
                   for name in document["operations"])  # fmt: skip


def test_two_services_of_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(ROOT / "examples"), *sys.path])
    with pytest.raises(ConfigurationError, match="two services are named 'client'"):
        build_document(["rpcdemo", "overview"], config=DEFAULTS)


def test_schema_keywords_are_rewritten_but_property_names_and_values_are_not() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "prefixItems": {"type": "array", "prefixItems": [{"type": "integer"}], "items": False},
            "discriminator": {"const": {"prefixItems": 1}},
        },
        "discriminator": {"propertyName": "kind", "mapping": {}},
    }
    assert to_draft7(schema) == {
        "type": "object",
        "properties": {
            "prefixItems": {
                "type": "array", "items": [{"type": "integer"}], "additionalItems": False
            },
            "discriminator": {"const": {"prefixItems": 1}},
        },
        "discriminator": "kind",
    }  # fmt: skip


def test_a_publisher_gets_the_typed_body_of_the_consumer_it_reaches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "path", [str(ROOT / "examples"), *sys.path])
    document = build_document("pingpong", config=DEFAULTS)
    published = message(document, "ping.serve.publish", "body")
    consumed = message(document, "pong.on_ball", "body")
    assert published["payload"] == consumed["payload"] == {"$ref": "#/components/schemas/Ball"}
    assert published["description"] == "The body that `pong.on_ball` decode(s)."
    # A topic consumer is not matched by a direct publisher: the body stays open.
    shop = build_document("tests.asyncapi.shop", config=DEFAULTS)
    assert message(shop, "shop.restock.publish.2", "body")["payload"]["type"] == "object"
