"""Delivery guarantees: retry with backoff, dead-letter queues, quorum queues, declarations.

On memory:// and RabbitMQ, on asyncio and trio.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import anyio
import pytest

import farine.amqp
from farine._broker.interface import Outgoing, QueueSpec, Topology
from farine._connections import get_connection
from farine._retry import DELAY_LEVELS, delay_level
from farine.amqp import AsyncPublisher, Message, Properties, Retry
from farine.amqp._dead_letter import delay_destination
from farine.amqp._dlq import peek, purge, replay
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.exceptions import ConfigurationError
from farine.runtime import Runtime
from tests.amqp import _rabbit
from tests.amqp._proxy import TcpProxy
from tests.amqp.conftest import Broker, Recorder, running

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def publisher(runtime: Runtime, exchange: str, routing_key: str = "rk") -> AsyncPublisher:
    assert runtime.config is not None
    return AsyncPublisher(exchange, routing_key, settings=runtime.config.service("tests"))


async def wait_until(check: Any, seconds: float = 15) -> None:
    """Wait until `await check()` is true, looking again after each broker round trip."""
    with anyio.fail_after(seconds):
        # The broker's queues are observable only by asking it, so ask until it is so.
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_a_poison_message_is_tried_three_times_with_growing_delays_then_dead_lettered(
    broker: Broker,
) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue()
    poison, good = Recorder(), Recorder()

    class Poison:
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="rk",
            queue=queue,
            prefetch=1,  # a retrying message holding the only slot would stop the rest
            retry=Retry(attempts=3, backoff=[0.5, 1.0]),
        )
        async def handle(self, body: Any, message: Message) -> None:
            if body["poison"]:
                poison.add((anyio.current_time(), message.exchange, message.routing_key))
                raise RuntimeError("cannot digest " + "x" * 2000)
            good.add((anyio.current_time(), body["n"]))

    async with running(Poison, config=broker.config()) as runtime:
        send = publisher(runtime, exchange)
        await send({"poison": True}, message_id="poison-1")
        await poison.wait_for(1)
        # While the poison message waits for its retry, the others flow at full speed.
        for n in range(20):
            await send({"poison": False, "n": n})
        await good.wait_for(20)
        await poison.wait_for(3)
        await wait_until(lambda: _has_dead_letters(broker, queue))
        dead = await broker.dead_letters(queue)
        assert len(poison.items) == 3
    times = [item[0] for item in poison.items]
    first_gap, second_gap = times[1] - times[0], times[2] - times[1]
    assert first_gap >= 0.5 * 0.5  # the first delay, less its jitter at most
    assert second_gap >= 1.0 * 0.5
    assert sorted(n for _, n in good.items) == list(range(20))
    assert max(t for t, _ in good.items) < times[2]
    # Retried messages reach the handler as first published.
    assert {item[1:] for item in poison.items} == {(exchange, "rk")}
    assert len(dead) == 1
    headers = dead[0].headers
    assert dead[0].message_id == "poison-1"
    assert headers["x-farine-error-type"] == "RuntimeError"
    assert headers["x-farine-error-message"].startswith("cannot digest xxx")
    assert len(headers["x-farine-error-message"]) == 500
    assert headers["x-farine-attempts"] == 3
    assert headers["x-farine-service"] == "poison"
    assert headers["x-farine-entrypoint"] == "poison.handle"
    failed_at = datetime.datetime.fromisoformat(headers["x-farine-failed-at"])
    assert abs(datetime.datetime.now(datetime.UTC) - failed_at) < datetime.timedelta(minutes=1)
    assert headers["x-farine-original-exchange"] == exchange
    assert headers["x-farine-original-routing-key"] == "rk"
    assert dead[0].route == (exchange, "rk")
    assert await broker.ready(queue) == 0


async def _has_dead_letters(broker: Broker, queue: str, count: int = 1) -> bool:
    return len(await broker.dead_letters(queue)) >= count


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_transient_failure_succeeds_on_its_second_attempt(
    broker: Broker, queue_type: str
) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue()
    calls = Recorder()

    class Flaky:
        @farine.amqp.consume(
            exchange=exchange, routing_key="rk", queue=queue, queue_type=queue_type
        )
        def handle(self, body: Any, message: Message) -> None:
            calls.add((message.exchange, message.routing_key, message.headers.get("h")))
            if len(calls.items) == 1:
                raise ConnectionRefusedError("the database is restarting")

    # The default policy: transient failures retried with backoff.
    config = broker.config(retry_delay=0.1)
    async with running(Flaky, config=config) as runtime:
        await publisher(runtime, exchange)({"n": 1}, headers={"h": "v"})
        await calls.wait_for(2)
        assert await broker.dead_letters(queue) == []
    assert calls.items == [(exchange, "rk", "v")] * 2
    assert await broker.ready(queue) == 0


@pytest.mark.parametrize("kind", ["outside on", "permanent"])
async def test_failures_not_to_retry_go_straight_to_the_dead_letter_queue(
    broker: Broker, kind: str
) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue()
    calls = Recorder()

    class Picky:
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="rk",
            queue=queue,
            retry=Retry(attempts=5, backoff=0.1, on=(ConnectionError,)),
        )
        async def handle(self, body: Any, message: Message) -> None:
            calls.add(body)
            if kind == "permanent":
                raise farine.amqp.Permanent("no such customer")
            raise KeyError("customer")

    async with running(Picky, config=broker.config()) as runtime:
        await publisher(runtime, exchange)({"n": 1})
        await wait_until(lambda: _has_dead_letters(broker, queue))
        dead = await broker.dead_letters(queue)
    assert calls.items == [{"n": 1}]
    assert len(dead) == 1
    expected = "farine.amqp.Permanent" if kind == "permanent" else "KeyError"
    assert dead[0].headers["x-farine-error-type"] == expected
    assert dead[0].headers["x-farine-attempts"] == 1


async def test_bad_bodies_go_straight_to_the_dead_letter_queue(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue()
    calls = Recorder()

    class Typed:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: dict[str, int], message: Message) -> None:
            calls.add(body)

    async with running(Typed, config=broker.config()) as runtime:
        assert runtime.config is not None
        connection = await get_connection(runtime.config.service("tests"))
        properties = Properties(content_type="application/json", message_id="bad-1")
        await connection.publish(Outgoing(exchange, "rk", b"{not json", properties))
        await publisher(runtime, exchange)({"n": 2})
        await calls.wait_for(1)
        await wait_until(lambda: _has_dead_letters(broker, queue))
        dead = await broker.dead_letters(queue)
    assert calls.items == [{"n": 2}]
    assert [view.message_id for view in dead] == ["bad-1"]
    assert dead[0].headers["x-farine-error-type"] == "BadBody"
    assert "invalid JSON" in dead[0].headers["x-farine-error-message"]
    assert dead[0].headers["x-farine-attempts"] == 0
    assert dead[0].preview == b"{not json"


async def test_the_default_policy_dead_letters_a_transient_failure_once_its_budget_is_spent(
    broker: Broker,
) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue()
    calls = Recorder()

    class Down:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            calls.add(body)
            raise TimeoutError("still down")

    # Delays of 0.1s then 0.2s fit a budget of 0.3s; the next one (0.4s) does not.
    config = broker.config(retry_delay=0.1, retry_budget=0.3)
    async with running(Down, config=config) as runtime:
        await publisher(runtime, exchange)({"n": 1})
        await wait_until(lambda: _has_dead_letters(broker, queue))
        dead = await broker.dead_letters(queue)
    assert len(calls.items) == 3
    assert dead[0].headers["x-farine-attempts"] == 3
    assert dead[0].headers["x-farine-error-type"] == "TimeoutError"


async def test_dead_letter_names_an_exchange_declared_with_the_queue(broker: Broker) -> None:
    exchange, dead_exchange = broker.exchange(), broker.exchange("dlx")
    queue = broker.retrying_queue()
    copies = Recorder()

    class Failing:
        @farine.amqp.consume(
            exchange=exchange, routing_key="rk", queue=queue, dead_letter=dead_exchange
        )
        async def handle(self, body: Any, message: Message) -> None:
            raise ValueError("wrong")

        # Anyone may bind to the dead-letter exchange: the routing key is the queue's name.
        @farine.amqp.consume(exchange=dead_exchange, routing_key=queue, queue=broker.queue("all"))
        async def audit(self, body: Any, message: Message) -> None:
            copies.add((body, message.headers["x-farine-error-type"]))

    async with running(Failing, config=broker.config()) as runtime:
        # Declared at start-up, named as it is: before anything failed.
        assert runtime.config is not None
        connection = await get_connection(runtime.config.service("tests"))
        assert await connection.queue_size(f"{queue}.dead") == 0
        await publisher(runtime, exchange)({"n": 1})
        assert await copies.wait_for(1) == [({"n": 1}, "ValueError")]
        dead = await broker.dead_letters(queue)
    assert [view.headers["x-farine-error-message"] for view in dead] == ["wrong"]


async def test_dead_letter_false_rejects_failed_messages(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue()
    calls = Recorder()

    class Plain:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            calls.add(body)
            raise ValueError("dropped")

    async with running(Plain, config=broker.config(dead_letter="false")) as runtime:
        await publisher(runtime, exchange)({"n": 1})
        await publisher(runtime, exchange)({"n": 2})
        await calls.wait_for(2)
        assert runtime.config is not None
        connection = await get_connection(runtime.config.service("tests"))
        await wait_until(lambda: _empty(broker, queue))
        assert await connection.queue_size(f"{queue}.dead") is None
    assert calls.items == [{"n": 1}, {"n": 2}]


async def _empty(broker: Broker, queue: str) -> bool:
    return await broker.ready(queue) == 0


async def test_a_long_delay_does_not_hold_up_a_shorter_one(broker: Broker) -> None:
    # Per-message TTLs expire only at the head of a queue: each delay level has a queue
    # of its own, so a message due in 0.2s never waits behind one due in 20s.
    queue = broker.retrying_queue()
    assert delay_level(20) == 20
    assert delay_level(0.15) == 0.2
    assert delay_level(1e9) == DELAY_LEVELS[-1]
    arrived = Recorder()

    class Work:
        @farine.amqp.consume(exchange=broker.exchange(), routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            arrived.add(body)
            message.ack()

    async with running(Work, config=broker.config()) as runtime:
        assert runtime.config is not None
        connection = await get_connection(runtime.config.service("tests"))
        for delay in (20.0, 0.2):
            destination = delay_destination(queue, delay, durable=True, quorum=False)
            await connection.declare(destination.topology)
            properties = Properties(expiration=str(round(delay * 1000)))
            body = f'{{"delay": {delay}}}'.encode()
            await connection.publish(Outgoing("", destination.routing_key, body, properties))
        assert await arrived.wait_for(1) == [{"delay": 0.2}]
        long_wait = delay_destination(queue, 20.0, durable=True, quorum=False).routing_key
        assert await broker.ready(long_wait) == 1


async def test_a_quorum_queue_counts_deliveries_and_honours_its_delivery_limit(
    broker: Broker,
) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue()
    counts = Recorder()

    class Quorum:
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="rk",
            queue=queue,
            queue_type="quorum",
            delivery_limit=2,
            queue_arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue + ".x",
            },
        )
        async def handle(self, body: Any, message: Message) -> None:
            counts.add(message.delivery_count)
            message.nack(requeue=True)

        @farine.amqp.consume(exchange=broker.exchange("x"), queue=broker.queue("q.x"))
        async def gone(self, body: Any, message: Message) -> None:
            counts.add(("dead-lettered", message.headers["x-death"][0]["reason"]))

    async with running(Quorum, config=broker.config()) as runtime:
        await publisher(runtime, exchange)({"n": 1})
        items = await counts.wait_for(4)
    assert items == [0, 1, 2, ("dead-lettered", "delivery_limit")]


async def test_a_declaration_that_disagrees_fails_with_one_clear_error(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.queue()

    class Quorum:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, queue_type="quorum")
        async def handle(self, body: Any, message: Message) -> None:
            raise AssertionError("never called")

    connection = await get_connection(broker.config().service("tests"))
    await connection.declare(Topology(queues=(QueueSpec(queue),)))  # a classic queue
    uri = broker.uri
    port = urlsplit(_rabbit.RABBITMQ_URI).port or 5672
    proxy = None if broker.is_memory else TcpProxy(port)
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        if proxy is not None:
            await tg.start(proxy.serve)
            uri = _rabbit.uri_on_port(proxy.port)
        config = broker.config(amqp_uri=uri)
        runtime = Runtime(
            [ServiceDefinition(Quorum, "tests", find_entrypoints(Quorum))], config=config
        )
        with anyio.fail_after(20), pytest.raises(BaseException) as info:  # noqa: PT011
            await runtime.run()
        tg.cancel_scope.cancel()
        error = _single(info.value)
    assert isinstance(error, ConfigurationError)
    assert str(error) == (
        f"queue {queue!r} exists with x-queue-type = none, but is declared with "
        "x-queue-type = 'quorum' (PRECONDITION_FAILED): declare it as it is, or delete the "
        "queue so that it can be declared anew"
    )
    if proxy is not None:
        assert proxy.accepted == 1  # one connection attempt: no reconnection loop


async def test_dead_letters_are_shown_replayed_and_purged(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.retrying_queue()
    seen = Recorder()
    broken = True

    class Fixable:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            if broken:
                raise ValueError("bug in version 1")
            seen.add((body, sorted(k for k in message.headers if k.startswith("x-"))))

    async with running(Fixable, config=broker.config()) as runtime:
        send = publisher(runtime, exchange)
        for n in range(3):
            await send({"n": n}, message_id=f"m-{n}")
        await wait_until(lambda: _has_dead_letters(broker, queue, 3))
        assert runtime.config is not None
        connection = await get_connection(runtime.config.service("tests"))
        dead = f"{queue}.dead"
        views = await peek(connection, dead, limit=2)
        # The oldest first: the order in which the handlers (running side by side) failed.
        shown = [view.message_id for view in views]
        assert len(shown) == 2
        assert set(shown) < {"m-0", "m-1", "m-2"}
        assert await connection.queue_size(dead) == 3  # peeking leaves them there
        broken = False
        assert await replay(connection, dead, limit=2) == 2
        replayed = await seen.wait_for(2)
        assert sorted(body["n"] for body, _ in replayed) == sorted(
            int(str(name)[2:]) for name in shown
        )
        assert [headers for _, headers in replayed] == [[], []]  # no x-farine-* left
        assert await purge(connection, dead) == 1
        assert await connection.queue_size(dead) == 0
        with pytest.raises(ConfigurationError, match="no queue"):
            await replay(connection, f"{queue}.nothing")


def _single(error: BaseException) -> BaseException:
    if isinstance(error, BaseExceptionGroup):
        inner = cast("tuple[BaseException, ...]", error.exceptions)  # pyright: ignore[reportUnknownMemberType]
        if len(inner) == 1:
            return _single(inner[0])
    return cast("BaseException", error)


async def _farine(tmp_path: Path, *args: str) -> tuple[int, str]:
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "farine", *args],
            cwd=tmp_path,
            env={**os.environ, "FARINE_INI": str(tmp_path / "farine.ini")},
            check=False,
        )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def test_farine_dlq_lists_shows_and_replays_on_rabbitmq(
    rabbitmq: Broker, tmp_path: Path
) -> None:
    exchange, queue = rabbitmq.exchange(), rabbitmq.retrying_queue()
    (tmp_path / "farine.ini").write_text(f"[DEFAULT]\namqp_uri = {rabbitmq.uri}\n")
    (tmp_path / "dlqapp").mkdir()
    (tmp_path / "dlqapp" / "__init__.py").write_text("")
    (tmp_path / "dlqapp" / "service.py").write_text(
        "import farine.amqp\n\n"
        "class Orders:\n"
        f"    @farine.amqp.consume(exchange={exchange!r}, routing_key='rk', queue={queue!r})\n"
        "    def handle(self, body, message):\n"
        "        pass\n"
    )
    seen = Recorder()
    broken = True

    class Orders:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            if broken:
                raise ValueError("bug in version 1")
            seen.add(body)

    dead = f"{queue}.dead"
    async with running(Orders, config=rabbitmq.config()) as runtime:
        await publisher(runtime, exchange)({"n": 1}, message_id="m-1")
        await wait_until(lambda: _has_dead_letters(rabbitmq, queue))
        code, out = await _farine(tmp_path, "dlq", "list", "dlqapp")
        assert code == 0, out
        assert f"{dead}\t1\t(orders.handle)" in out
        code, out = await _farine(tmp_path, "dlq", "show", dead, "--limit", "5")
        assert code == 0, out
        assert f"--- message m-1 (7 bytes) -> {exchange!r} / 'rk'" in out
        assert "  x-farine-error-type: ValueError" in out
        assert "  x-farine-error-message: bug in version 1" in out
        assert '  body: {"n":1}' in out
        assert "INFO" not in out
        code, out = await _farine(tmp_path, "dlq", "purge", dead)
        assert code == 2
        assert "add --yes to confirm" in out
        broken = False
        code, out = await _farine(tmp_path, "dlq", "replay", dead)
        assert code == 0, out
        assert "1 message(s) replayed from" in out
        assert await seen.wait_for(1) == [{"n": 1}]
        code, out = await _farine(tmp_path, "dlq", "purge", dead, "--yes")
        assert code == 0, out
        assert "0 message(s) purged" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"queue_type": "quorum", "exclusive": True}, "a quorum queue is durable, never exclusive"),
        ({"queue_type": "quorum", "durable": False}, "a quorum queue is durable"),
        ({"delivery_limit": 3}, "delivery_limit needs queue_type='quorum'"),
    ],
)
async def test_queue_types_refuse_what_they_cannot_be(
    broker: Broker, arguments: dict[str, Any], message: str
) -> None:
    queue = broker.queue()

    class Wrong:
        @farine.amqp.consume(exchange=broker.exchange(), queue=queue, **arguments)
        async def handle(self, body: Any, message: Message) -> None:
            raise AssertionError("never called")

    runtime = Runtime(
        [ServiceDefinition(Wrong, "tests", find_entrypoints(Wrong))], config=broker.config()
    )
    with anyio.fail_after(20), pytest.raises(BaseException) as info:  # noqa: PT011
        await runtime.run()
    error = _single(info.value)
    assert isinstance(error, ConfigurationError)
    assert f"queue {queue!r}: {message}" in str(error)
