"""farine beside the real baguette-messaging 0.19 (the seed), one RabbitMQ vhost, both backends.

The seed runs as its users ran it: its `farine --start=module` script for services
(tests/interop/seed/*.py2), and a script calling its RPC client or its publisher. farine
runs in-process. What these tests show is what docs/migrating.md states.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

import farine.amqp
import farine.rpc
from farine import settings
from farine.amqp import AsyncPublisher, Message
from farine.exceptions import MethodNotFound, RPCError
from farine.settings import Config
from tests.amqp.conftest import Recorder, running
from tests.interop.readme import Consume, Myotherservice

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.interop.conftest import Queues, Seed

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.rabbitmq,
    pytest.mark.usefixtures("close_script_loop"),
]


def publisher(config: Config, exchange: str, routing_key: str) -> AsyncPublisher:
    return AsyncPublisher(exchange, routing_key, settings=config.service("tests"))


def ours(snapshot: dict[str, tuple[int, int]], names: str) -> dict[str, tuple[int, int]]:
    """The queues of this test (their names carry its suffix)."""
    return {name: counts for name, counts in snapshot.items() if names in name}


# -- RPC -----------------------------------------------------------------------------------


class FarineServer:
    """The same methods as seed/rpcserver.py2, served by farine."""

    @farine.rpc.method()
    def echo(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    @farine.rpc.method()
    def letters(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        yield "a"
        yield "b"

    @farine.rpc.method()
    async def zero(self, *args: Any, **kwargs: Any) -> int:
        return 0

    @farine.rpc.method()
    def broken(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("x")


def seed_reply_queues(snapshot: dict[str, tuple[int, int]]) -> set[str]:
    """Queues named as the seed's RPC client names its reply queue (uuid4().hex)."""
    return {name for name in snapshot if re.fullmatch("[0-9a-f]{32}", name)}


async def test_seed_client_calls_a_farine_server(
    seed: Seed, queues: Queues, farine_config: Config, names: str
) -> None:
    name = f"farsrv{names}"
    service = type(name.capitalize(), (FarineServer,), {})
    calls: dict[str, Any] = {}

    async def call(label: str, method: str, *args: Any, **kwargs: Any) -> None:
        calls[label] = await seed.call(name, method, *args, **kwargs)

    before = seed_reply_queues(await queues.snapshot())
    # Each call is a Python 2 process of its own: run them at once.
    async with running(service, config=farine_config), anyio.create_task_group() as tg:
        tg.start_soon(lambda: call("plain", "echo", 1, "a", k=[1]))
        tg.start_soon(lambda: call("stream", "letters", stream=True))
        tg.start_soon(lambda: call("error", "broken"))
        tg.start_soon(lambda: call("zero", "zero"))
        tg.start_soon(lambda: call("missing", "missing", reply_timeout=1))
    assert calls["plain"] == {"result": {"args": [1, "a"], "kwargs": {"k": [1]}}}
    assert calls["stream"] == {"result": ["a", "b"]}
    assert calls["error"]["error"] == "RPCError"
    # farine's one-line summary in the seed's `__except__`, shown as the seed showed its
    # traceback text (farine sends the traceback only with `rpc_send_traceback = true`).
    assert calls["error"]["text"].rstrip().endswith("ValueError: x")
    assert "Traceback" not in calls["error"]["text"]
    # The seed's own bugs, which farine's client does not have: it drops a falsy reply
    # (`0`) and ends the call with nothing; it publishes without `mandatory`, so a missing
    # method is only noticed when its timeout (none by default: forever) runs out.
    assert calls["zero"]["error"] == "StopIteration"
    assert calls["missing"]["error"] == "RPCError"
    assert "timeout" in calls["missing"]["text"]
    # Each seed client leaves its durable reply queue behind.
    assert len(seed_reply_queues(await queues.snapshot()) - before) == 5


async def test_farine_client_calls_a_seed_server(
    seed: Seed, queues: Queues, amqp_uri: str, names: str
) -> None:
    name = f"seedsrv{names}"
    seed.app("rpcserver", name, CLASS=name.capitalize())
    seed.sections.add(name)
    async with await seed.start(name):
        for method in ("echo", "letters", "zero", "broken"):
            await queues.wait_for_consumers(f"{name}__{method}")
        # The seed's server replies through its own exchange: name it a legacy server.
        settings.use(Config.from_string(
            f"[DEFAULT]\namqp_uri = {amqp_uri}\nrpc_legacy_servers = {name}\n"
        ))  # fmt: skip
        with anyio.fail_after(30):
            async with farine.rpc.Client(name, timeout=10) as rpc:
                assert await rpc.echo(1, "a", k=[1]) == {"args": [1, "a"], "kwargs": {"k": [1]}}
                assert [item async for item in rpc.letters(__stream__=True)] == ["a", "b"]
                assert await rpc.zero() == 0  # falsy replies arrive
                with pytest.raises(RPCError) as info:
                    await rpc.broken()
                with pytest.raises(MethodNotFound):  # at once: mandatory
                    await rpc.missing()
            # The blocking client of `def` methods and scripts.
            blocking = farine.rpc.Client(name, timeout=10)
            assert await anyio.to_thread.run_sync(
                lambda: list(blocking.letters(__stream__=True))
            ) == ["a", "b"]
    error = info.value
    assert error.remote_type == "ValueError"
    assert error.remote_message == "x"
    assert "raise ValueError('x')" in (error.remote_traceback or "")  # the seed's own


# -- publishing and consuming ------------------------------------------------------------


class Order(msgspec.Struct):
    id: int
    items: list[str]


async def test_seed_publisher_reaches_a_typed_farine_consumer(
    seed: Seed, farine_config: Config, names: str
) -> None:
    exchange, key = f"orders{names}", f"created{names}"
    seen = Recorder()

    class Shop:
        @farine.amqp.consume(exchange=exchange, routing_key=key)
        def created(self, body: Order, message: Message) -> None:
            seen.add(
                (body, message.payload, message.content_type, message.content_encoding,
                 dict(message.properties), message.delivery_info["routing_key"])
            )  # fmt: skip

    async with running(Shop, config=farine_config):
        await seed.publish(f"pub{names}", {"id": 7, "items": ["a"]}, exchange, key)
        [(body, payload, content_type, encoding, properties, routing_key)] = await seen.wait_for(1)
    assert body == Order(id=7, items=["a"])
    assert payload == {"id": 7, "items": ["a"]}
    assert (content_type, encoding, routing_key) == ("application/json", "utf-8", key)
    assert properties["delivery_mode"] == 2  # the seed's default delivery_mode


async def test_farine_publisher_reaches_a_seed_consumer_and_both_see_kombus_attributes(
    seed: Seed, queues: Queues, farine_config: Config, names: str
) -> None:
    exchange, key = f"events{names}", f"happened{names}"
    name = f"seedcons{names}"
    seed.app("consumer", name, CLASS=name.capitalize(),
             ARGS=f"exchange='{exchange}', routing_key='{key}'")  # fmt: skip
    seed.sections.add(name)
    seen = Recorder()

    class Copy:  # its own queue on the same binding: a copy of each message
        @farine.amqp.consume(exchange=exchange, routing_key=key, queue=f"copy{names}")
        def handle(self, body: Any, message: Message) -> None:
            seen.add(message)

    async with await seed.start(name) as process:
        await queues.wait_for_consumers(key)
        async with running(Copy, config=farine_config):
            await publisher(farine_config, exchange, key)(
                {"n": 1, "text": "é"}, headers={"h": "v"}, correlation_id="c-1"
            )
            [kombu] = await seed.wait_for_records(1)
            [message] = await seen.wait_for(1)
        assert "Traceback" not in process.output()
    assert kombu["body"] == kombu["payload"] == {"n": 1, "text": "é"}
    assert (kombu["exchange"], kombu["routing_key"]) == (exchange, key)
    # What kombu gave the seed's handler is what farine's Message gives.
    assert message.payload == kombu["payload"]
    assert message.body.decode() == kombu["raw"]
    assert kombu["body_type"] == "unicode"  # kombu's body was text; farine's is bytes
    assert message.content_type == kombu["content_type"] == "application/json"
    assert message.content_encoding == kombu["content_encoding"] == "utf-8"
    assert dict(message.headers) == kombu["headers"] == {"h": "v"}
    assert sorted(message.delivery_info) == kombu["delivery_info"]
    assert sorted(message.properties) == kombu["properties"]


BLOB = bytes(range(256)) * 3  # not UTF-8, not JSON


async def test_farine_bytes_reach_a_seed_consumer_as_the_same_bytes(
    seed: Seed, queues: Queues, farine_config: Config, names: str
) -> None:
    exchange, key = f"blobs{names}", f"blob{names}"
    name = f"seedbytes{names}"
    seed.app("bytesconsumer", name, CLASS=name.capitalize(),
             ARGS=f"exchange='{exchange}', routing_key='{key}'")  # fmt: skip
    seed.sections.add(name)
    async with await seed.start(name) as process:
        await queues.wait_for_consumers(key)
        send = publisher(farine_config, exchange, key)
        await send(BLOB)
        await send(bytearray(b"\x00two"))
        records = await seed.wait_for_records(2)
        assert "Traceback" not in process.output()
    assert [base64.b64decode(record["body"]) for record in records] == [BLOB, b"\x00two"]
    for record in records:
        assert record["body_type"] == "str"  # Python 2's bytes
        assert record["payload_is_body"]
        assert record["content_type"] == "application/data"
        assert record["content_encoding"] == "binary"


async def test_seed_raw_bytes_reach_bytes_and_unannotated_farine_consumers(
    seed: Seed, farine_config: Config, names: str
) -> None:
    exchange = f"rawbytes{names}"
    seen = Recorder()

    class Sink:
        @farine.amqp.consume(exchange=exchange, routing_key="typed", queue=f"typed{names}")
        async def typed(self, body: bytes, message: Message) -> None:
            seen.add(("typed", body, message.content_type, message.content_encoding))

        @farine.amqp.consume(exchange=exchange, routing_key="plain", queue=f"plain{names}")
        def plain(self, body, message: Message) -> None:  # pyright: ignore[reportMissingParameterType, reportUnknownParameterType]
            seen.add(("plain", body, message.content_type, message.content_encoding))

    async with running(Sink, config=farine_config):
        await seed.publish_bytes(f"pub{names}", BLOB, exchange, "typed")
        await seed.publish_bytes(f"pub{names}", b"\x00plain", exchange, "plain")
        items = await seen.wait_for(2)
    raw = ("application/data", "binary")
    assert sorted(items, key=repr) == sorted(
        [("typed", BLOB, *raw), ("plain", b"\x00plain", *raw)], key=repr
    )


async def test_one_consumer_declared_by_both_handles_each_message_once_then_farine_alone(
    seed: Seed, queues: Queues, farine_config: Config, names: str
) -> None:
    exchange, key = f"shared{names}", f"rk{names}"
    name = f"worker{names}"
    seed.app("consumer", name, CLASS=name.capitalize(),
             ARGS=f"exchange='{exchange}', routing_key='{key}'")  # fmt: skip
    seed.sections.add(name)
    seen = Recorder()

    async def handle(self: object, body: Any, message: Message) -> None:
        seen.add(body["n"])

    # The same service, the same decorator, now on farine.
    service = type(name.capitalize(), (), {
        "handle": farine.amqp.consume(exchange=exchange, routing_key=key)(handle)
    })  # fmt: skip
    send = publisher(farine_config, exchange, key)

    def handled() -> list[int]:
        return sorted([record["body"]["n"] for record in seed.records()] + seen.items)

    # 1. Side by side: each message handled once, by one or the other.
    process = await seed.start(name)
    async with process:
        await queues.wait_for_consumers(key)
        async with running(service, config=farine_config):
            await queues.wait_for_consumers(key, 2)
            for n in range(40):
                await send({"n": n})  # mandatory: raises if nothing is bound
            await queues.wait_for_empty(key)
            assert handled() == list(range(40))
            # 2. The seed stops; farine alone takes what comes next.
            await process.stop()
            before = len(seen.items)
            for n in range(40, 50):
                await send({"n": n})
            await seen.wait_for(before + 10)
            await queues.wait_for_empty(key)
    assert handled() == list(range(50))
    # One queue, named after the routing key, drained; no queue named after the service.
    assert ours(await queues.snapshot(), names) == {key: (0, 0)}

    # 3. Published while nothing consumes: kept in the same queue, drained by farine alone.
    before = len(seen.items)
    for n in range(50, 70):
        await send({"n": n})
    assert ours(await queues.snapshot(), names) == {key: (20, 0)}
    async with running(service, config=farine_config):
        await seen.wait_for(before + 20)
        await queues.wait_for_empty(key)
    assert handled() == list(range(70))
    assert ours(await queues.snapshot(), names) == {key: (0, 0)}


async def test_a_publish_to_the_seeds_default_binding_is_routed(
    seed: Seed, queues: Queues, farine_config: Config, names: str
) -> None:
    # A farine consumer without exchange nor routing key gets what the seed's
    # `@farine.amqp.publish()` sends: exchange and routing key both the service name.
    name = f"defkey{names}"
    seen = Recorder()

    async def handle(self: object, body: Any, message: Message) -> None:
        seen.add((body, message.exchange, message.routing_key))

    service = type(name.capitalize(), (), {"handle": farine.amqp.consume()(handle)})
    async with running(service, config=farine_config):
        await seed.publish(name, {"n": 1})
        assert await seen.wait_for(1) == [({"n": 1}, name, name)]

    # And the other way: a seed consumer without routing key gets farine's default publish.
    other = f"seeddef{names}"
    seed.app("consumer", other, CLASS=other.capitalize(), ARGS="")
    seed.sections.add(other)
    async with await seed.start(other):
        await queues.wait_for_consumers(other)
        await publisher(farine_config, other, other)({"n": 2})  # mandatory
        [record] = await seed.wait_for_records(1)
    assert (record["body"], record["exchange"], record["routing_key"]) == ({"n": 2}, other, other)


# -- the seed README's examples, side by side ----------------------------------------------


async def test_the_seed_readme_examples_run_side_by_side_with_the_seed(
    seed: Seed, queues: Queues, farine_config: Config, amqp_uri: str
) -> None:
    seed.app("readme", "readme")
    seed.sections.update({"consume", "myotherservice"})
    async with await seed.start("readme"):
        await queues.wait_for_consumers("routing_key")
        await queues.wait_for_consumers("myotherservice__dummy")
        async with running(Consume, Myotherservice, config=farine_config):
            await queues.wait_for_consumers("routing_key", 2)
            await queues.wait_for_consumers("myotherservice__dummy", 2)
            # AMQP: one queue for both consumers, drained, and none stranded.
            for n in range(10):
                await seed.publish("consume", {"result": n}, "publish", "routing_key")
                await publisher(farine_config, "publish", "routing_key")({"result": n})
            await queues.wait_for_empty("routing_key")
            # RPC: either server answers either client.
            seed_replies = [await seed.call("myotherservice", "dummy") for _ in range(4)]
            settings.use(Config.from_string(
                f"[DEFAULT]\namqp_uri = {amqp_uri}\nrpc_legacy_servers = myotherservice\n"
            ))  # fmt: skip
            async with farine.rpc.Client("myotherservice", timeout=10) as rpc:
                farine_replies = [await rpc.dummy() for _ in range(8)]
    assert seed_replies == [{"result": True}] * 4
    assert farine_replies == [True] * 8
    snapshot = await queues.snapshot()
    assert snapshot["routing_key"] == (0, 0)
    assert "consume" not in snapshot  # farine once named the queue after the service
    assert not [name for name in snapshot if re.fullmatch("publish|readme", name)]


# -- settings ----------------------------------------------------------------------------


async def test_the_seeds_queue_flags_are_its_defaults_and_any_value_written_is_true(
    seed: Seed, queues: Queues, farine_config: Config, names: str
) -> None:
    plain, written, alone = f"plain{names}", f"written{names}", f"alone{names}"
    for name in (plain, written, alone):
        seed.app("consumer", name, CLASS=name.capitalize(), ARGS=f"routing_key='{name}'")
        seed.sections.add(name)
    # The seed hands the INI's strings to kombu, which makes any non-empty one true.
    seed.keys[written] = {"durable": "false", "auto_delete": "false"}
    seed.keys[alone] = {"exclusive": "false"}
    async with await seed.start(plain), await seed.start(written), await seed.start(alone):
        for name in (plain, written, alone):
            await queues.wait_for_consumers(name)
        plain_flags = await queues.flags(plain)
        written_flags = await queues.flags(written)
        alone_flags = await queues.flags(alone)
    assert plain_flags == {"durable": "true", "auto_delete": "false", "exclusive": "false"}
    assert written_flags == {"durable": "true", "auto_delete": "true", "exclusive": "false"}
    assert alone_flags["exclusive"] == "true"

    # farine declares the seed's defaults: its consumer shares the queue the seed made.
    seen = Recorder()

    async def handle(self: object, body: Any, message: Message) -> None:
        seen.add(body)

    service = type(plain.capitalize(), (), {
        "handle": farine.amqp.consume(routing_key=plain)(handle)
    })  # fmt: skip
    async with running(service, config=farine_config):
        await publisher(farine_config, plain, plain)({"n": 1})
        assert await seen.wait_for(1) == [{"n": 1}]
    assert await queues.flags(plain) == plain_flags
