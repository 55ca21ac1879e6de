"""The seed's `__debug__` profiling, and the public surface of `farine.amqp`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import farine.amqp
import farine.testing
from tests.amqp.conftest import Broker, Recorder

if TYPE_CHECKING:
    from farine.amqp import Message

pytestmark = pytest.mark.anyio


async def test_debug_profiles_the_handler_only_when_the_setting_allows_it(broker: Broker) -> None:
    exchange = broker.exchange()
    broker.queues.append("debug")  # the seed's fixed name: removed after the test
    handled, stats = Recorder(), Recorder()

    class Profiled:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=broker.queue())
        def handle(self, body: Any, message: Message) -> None:
            handled.add(body["n"])

    class Collector:
        @farine.amqp.consume(exchange=exchange, routing_key="debug", queue="debug")
        async def collect(self, body: Any, message: Message) -> None:
            stats.add(body)

    config = broker.config("[profiled]\ndebug = true\n")
    async with farine.testing.running(Profiled, Collector, config=config) as app:
        await app.publish(exchange, "rk", {"n": 1, "__debug__": True})
        [report] = await stats.wait_for(1)
        [call] = await app.wait_for("profiled.handle")  # profiled calls are recorded too
    assert handled.items == [1]
    assert call.body == {"n": 1, "__debug__": True}
    assert report["n"] == 1
    assert "function calls" in report["__debug__"]  # pstats output


async def test_debug_key_is_ignored_when_the_setting_is_off() -> None:
    class Plain:
        @farine.amqp.consume(exchange="plain", routing_key="rk")
        async def handle(self, body: Any, message: Message) -> None:
            pass

    async with farine.testing.running(Plain) as app:
        await app.publish("plain", "rk", {"n": 1, "__debug__": True})
        [call] = await app.wait_for("plain.handle")
        assert app.broker is not None
        assert not app.broker.has_queue("debug")
    assert call.body == {"n": 1, "__debug__": True}


def test_public_names_are_exactly_all() -> None:
    # "@py_builtins", ...: pytest rewrites the asserts of a package holding a pytest
    # plugin (farine.testing's), and adds these names to its modules.
    public = {name for name in vars(farine.amqp) if not name.startswith(("_", "@"))}
    public -= {"annotations"}  # `from __future__ import annotations`
    assert set(farine.amqp.__all__) == public
    assert isinstance(farine.amqp.__all__, tuple)
