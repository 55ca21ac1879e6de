"""`farine.testing.running()`'s app handle, on memory:// and RabbitMQ, on asyncio and trio."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import farine.amqp
import farine.execute
import farine.rpc
import farine.settings
import farine.testing
from farine.amqp import Message, UnroutableError
from farine.exceptions import ConfigurationError, RPCError
from farine.settings import Config
from farine.testing import CallsNotSeen

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.amqp.conftest import Broker

pytestmark = pytest.mark.anyio


async def test_publish_reaches_a_consumer_and_wait_for_returns_its_calls(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.queue()

    class Orders:
        @farine.amqp.consume(exchange=exchange, routing_key="created", queue=queue)
        def created(self, body: dict[str, int], message: Message) -> int:
            if body["id"] < 0:
                raise ValueError("negative id")
            return body["id"] * 10

    async with farine.testing.running(Orders, config=broker.config()) as app:
        await app.publish(exchange, "created", {"id": 1}, headers={"h": "v"}, message_id="m-1")
        [first] = await app.wait_for("orders.created")
        await app.publish(exchange, "created", {"id": -1})
        calls = await app.wait_for("orders.created", count=2)
    assert calls[0] is first
    assert (first.entrypoint, first.body, first.result, first.exception) == (
        "orders.created",
        {"id": 1},
        10,
        None,
    )
    assert first.message is not None
    assert (first.message.message_id, dict(first.message.headers)) == ("m-1", {"h": "v"})
    assert first.message.outcome == "ack"
    failed = calls[1]
    assert isinstance(failed.exception, ValueError)
    assert failed.result is None


async def test_wait_for_timing_out_says_how_many_calls_it_saw(broker: Broker) -> None:
    exchange = broker.exchange()

    class Orders:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=broker.queue())
        async def created(self, body: Any, message: Message) -> None:
            message.reject(requeue=False)  # settled: never redelivered
            raise RuntimeError("always")

    async with farine.testing.running(Orders, config=broker.config()) as app:
        await app.publish(exchange, "rk", {"n": 1})
        await app.wait_for("orders.created")
        seen = r"^orders\.created: 1 of 2 call\(s\) finished within 0\.5s \(1 raised\)$"
        with pytest.raises(CallsNotSeen, match=seen):
            await app.wait_for("orders.created", count=2, timeout=0.5)
        with pytest.raises(ConfigurationError, match=r"no entrypoint 'orders\.nope' is running"):
            app.calls("orders.nope")


async def test_rpc_calls_a_method_and_its_calls_are_recorded(broker: Broker) -> None:
    class Calc:
        @farine.rpc.method()
        def add(self, a: int, b: int = 0) -> int:
            return a + b

        @farine.rpc.method()
        async def countdown(self, n: int) -> Any:
            for i in range(n, 0, -1):
                yield i

        @farine.rpc.method()
        def flaky(self) -> Iterator[int]:
            yield 1
            raise RuntimeError("sensor unplugged")

    async with farine.testing.running(Calc, config=broker.config()) as app:
        assert await app.rpc("calc").add(1, b=2) == 3
        [call] = await app.wait_for("calc.add")
        items = [item async for item in app.rpc("calc").countdown(3, __stream__=True)]
        [stream] = await app.wait_for("calc.countdown")  # recorded once the stream ended
        with pytest.raises(RPCError, match="sensor unplugged"):
            async for _ in app.rpc("calc").flaky(__stream__=True):
                pass
        [failed] = await app.wait_for("calc.flaky")
    assert isinstance(failed.exception, RuntimeError)
    # The arguments as the handler got them: bound to its signature.
    assert (call.args, call.kwargs, call.result) == ((1, 2), {}, 3)
    assert items == [3, 2, 1]
    assert (stream.args, stream.result, stream.exception) == ((3,), None, None)


async def test_the_config_is_current_inside_the_block(broker: Broker) -> None:
    exchange = broker.exchange()

    class Orders:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=broker.queue())
        def created(self, body: Any, message: Message) -> None:
            pass

    config = broker.config("[orders]\nprefetch = 3\n")
    async with farine.testing.running(Orders, config=config) as app:
        assert farine.settings.current() is app.config
        assert farine.settings.get("orders").prefetch == 3
        # A publisher built in the block uses the block's broker.
        await farine.amqp.AsyncPublisher(exchange, "rk", service="orders").send({"n": 1})
        [call] = await app.wait_for("orders.created")
    assert call.body == {"n": 1}
    assert farine.settings.current() is not config


async def test_broker_is_a_view_of_memory_and_none_on_rabbitmq(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.queue()

    class Picky:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        def take(self, body: Any, message: Message) -> None:
            message.reject(requeue=False)

    async with farine.testing.running(Picky, config=broker.config()) as app:
        await app.publish(exchange, "rk", {"n": 1}, headers={"k": 1})
        await app.wait_for("picky.take")
        if not broker.is_memory:
            assert app.broker is None
            return
        assert app.broker is not None
        assert app.broker.uri == broker.uri
        [dead] = app.broker.dead_letters(queue)
        assert app.broker.dead_letters("other") == []
        assert app.broker.depth(queue) == 0
        assert app.broker.has_queue(queue)
        assert app.broker.has_exchange(exchange)
    assert dead.payload == {"n": 1}
    assert dead.headers["k"] == 1
    [death] = dead.headers["x-death"]
    assert (death["queue"], death["reason"], death["exchange"]) == (queue, "rejected", exchange)


async def test_unroutable_publish_raises(broker: Broker) -> None:
    exchange = broker.exchange()

    class Orders:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=broker.queue())
        def created(self, body: Any, message: Message) -> None:
            pass

    async with farine.testing.running(Orders, config=broker.config()) as app:
        with pytest.raises(UnroutableError):
            await app.publish(exchange, "nobody-listens", {"n": 1})


async def test_each_block_gets_its_own_memory_broker() -> None:
    started, gate = anyio.Event(), anyio.Event()

    class Slow:
        @farine.amqp.consume(exchange="orders", routing_key="rk", queue="orders-q", prefetch=1)
        async def take(self, body: Any, message: Message) -> None:
            started.set()
            await gate.wait()

    async with farine.testing.running(Slow, config="[slow]\nshutdown_timeout = 5\n") as first:
        await first.publish("orders", "rk", {"n": 1})
        await first.publish("orders", "rk", {"n": 2})
        assert first.broker is not None
        with anyio.fail_after(5):
            await started.wait()  # the first one is being handled, the second waits
        [waiting] = first.broker.messages("orders-q")
        assert waiting.payload == {"n": 2}
        gate.set()
        await first.wait_for("slow.take", count=2)
    async with farine.testing.running(Slow) as second:
        assert second.broker is not None
        assert second.broker.uri != first.broker.uri
        assert second.broker.depth("orders-q") == 0
        assert not second.broker.has_exchange("other")


async def test_a_config_naming_a_memory_broker_keeps_it() -> None:
    class Worker:
        @farine.execute.method(restart=False)
        async def work(self) -> None:
            pass

    config = Config.from_string("[DEFAULT]\namqp_uri = memory://named-by-test\n")
    async with farine.testing.running(Worker, config=config) as app:
        assert app.broker is not None
        assert app.broker.uri == "memory://named-by-test"
        assert app.config is config
        [call] = await app.wait_for("worker.work")
        assert app.instance("worker") is not None
        with pytest.raises(ConfigurationError, match="no service 'nope' is running"):
            app.instance("nope")
    assert call.args == ()
