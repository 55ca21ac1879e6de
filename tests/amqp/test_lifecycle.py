"""Stopping, plain scripts, outages and reconnection."""

from __future__ import annotations

import contextlib
import sys
import textwrap
import threading
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest

import farine.amqp
import farine.execute
import farine.testing
from farine._broker import AmqpConnection
from farine._connections import get_connection
from farine.amqp import AsyncPublisher, BrokerUnavailable, Message, PublishTimeout
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime
from tests.amqp import _rabbit
from tests.amqp._proxy import TcpProxy, free_port
from tests.amqp.conftest import Broker, LogWatcher, Recorder, running

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable
    from pathlib import Path

    from anyio.abc import TaskGroup, TaskStatus

    from farine.settings import Config

pytestmark = pytest.mark.anyio


def runtime_of(*classes: type, config: Config) -> Runtime:
    return Runtime(
        [ServiceDefinition(cls, "tests", find_entrypoints(cls)) for cls in classes], config=config
    )


async def test_graceful_stop_finishes_in_flight_and_requeues_the_rest(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    started = Recorder()
    release = threading.Event()

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, prefetch=5)
        def handle(self, body: Any, message: Message) -> None:
            started.add(body["n"])
            release.wait(20)

    # Two worker threads, five prefetched: two messages run, three wait for a thread.
    async with farine.testing.running(Worker, config=broker.config(max_workers=2)) as app:
        for n in range(8):
            await app.publish(exchange, "rk", {"n": n})
        in_flight = set(await started.wait_for(2))
        app.runtime.stop()
        release.set()
    # The two in flight finished and were acked; nothing else was started.
    assert sorted(started.items) == sorted(in_flight)
    assert {call.body["n"] for call in app.calls("worker.handle")} == in_flight
    if broker.is_memory:
        assert await broker.ready(queue) == 6

    # Everything else is still in the queue, and only that.
    class Again:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            pass

    async with farine.testing.running(Again, config=broker.config()) as again:
        rest = await again.wait_for("again.handle", count=6)
    assert sorted(call.body["n"] for call in rest) == sorted(set(range(8)) - in_flight)
    assert await broker.ready(queue) == 0


async def test_async_handlers_in_flight_finish_on_stop(broker: Broker) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    started, finished = Recorder(), Recorder()
    release = anyio.Event()

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, prefetch=3)
        async def handle(self, body: Any, message: Message) -> None:
            started.add(body["n"])
            await release.wait()
            finished.add(body["n"])

    async with farine.testing.running(Worker, config=broker.config()) as app:
        for n in range(3):
            await app.publish(exchange, "rk", {"n": n})
        await started.wait_for(3)
        app.runtime.stop()
        await anyio.wait_all_tasks_blocked()
        assert finished.items == []  # stopping does not cancel handlers
        release.set()
    assert sorted(finished.items) == [0, 1, 2]
    assert await broker.ready(queue) == 0


async def test_blocking_publish_from_a_plain_thread(
    broker: Broker, write_config: Callable[[str], Path]
) -> None:
    exchange = broker.exchange("consume")
    write_config(f"[DEFAULT]\namqp_uri = {broker.uri}\n")

    class Consume:
        @farine.amqp.consume(exchange=exchange, routing_key="routing_key", queue=broker.queue())
        def consume_dummy(self, body: Any, message: Message) -> None:
            message.ack()

    # The seed README's publisher, as written (with this test's exchange name).
    class Publish:
        @farine.amqp.publish(exchange=exchange, routing_key="routing_key")
        def publish_dummy(self, publish: farine.amqp.Publisher) -> bool:
            publish({"result": 0})
            return True

    results: list[object] = []

    def script() -> None:
        results.append(Publish().publish_dummy())

    async with farine.testing.running(Consume, config=broker.config()) as app:
        thread = threading.Thread(target=script)  # not an anyio worker: a plain thread
        thread.start()
        await anyio.to_thread.run_sync(thread.join)
        [call] = await app.wait_for("consume.consume_dummy")
    assert call.body == {"result": 0}
    assert results == [True]


@pytest.mark.rabbitmq
async def test_blocking_publish_from_a_script_process(
    rabbitmq: Broker, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    exchange = rabbitmq.exchange("consume")
    config_path = write_config(f"[DEFAULT]\namqp_uri = {rabbitmq.uri}\n")

    class Consume:
        @farine.amqp.consume(exchange=exchange, routing_key="routing_key", queue=rabbitmq.queue())
        async def consume_dummy(self, body: Any, message: Message) -> None:
            pass

    script = tmp_path / "publish_script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import farine.amqp

            class Publish:
                @farine.amqp.publish(exchange={exchange!r}, routing_key="routing_key")
                def publish_dummy(self, publish):
                    publish({{"result": 0}})
                    return True

            print(Publish().publish_dummy())
            """
        )
    )
    async with farine.testing.running(Consume, config=rabbitmq.config()) as app:
        with anyio.fail_after(30):
            done = await anyio.run_process(
                [sys.executable, str(script)], env={"FARINE_INI": str(config_path)}, check=False
            )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().strip() == "True"
        [call] = await app.wait_for("consume.consume_dummy", timeout=15)
    assert call.body == {"result": 0}


@pytest.mark.rabbitmq
async def test_reconnects_after_the_broker_closes_the_connection_and_loses_nothing(
    rabbitmq: Broker, watch_log: Callable[[str], LogWatcher]
) -> None:
    exchange, queue = rabbitmq.exchange(), rabbitmq.queue()
    seen = Recorder()
    lost = watch_log("lost (")
    reconnected = watch_log("reconnected to")
    resumed = watch_log("resumed")

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, prefetch=16)
        def handle(self, body: Any, message: Message) -> None:
            seen.add(body["n"])

    async with running(Worker, config=rabbitmq.config()) as runtime:
        connection = await get_connection(rabbitmq.settings(runtime))
        assert isinstance(connection, AmqpConnection)
        publish = AsyncPublisher(exchange, "rk", settings=rabbitmq.settings(runtime))
        total = 0
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                await publish({"n": total})
                total += 1
            # Cut our own connection from the broker side while publishing goes on, and
            # keep publishing through the outage and after it.
            tg.start_soon(_rabbit.close_connection, connection.name)
            with anyio.fail_after(20):
                while not lost.event.is_set():
                    await publish({"n": total})
                    total += 1
            for _ in range(100):
                await publish({"n": total})
                total += 1
        await reconnected.wait()
        await resumed.wait()
        await seen.wait_for_unique(total)
        assert set(seen.items) == set(range(total))
        assert connection.generation >= 2
    assert await rabbitmq.ready(queue) == 0


@pytest.mark.rabbitmq
async def test_consumer_comes_back_when_its_queue_is_deleted(
    rabbitmq: Broker, watch_log: Callable[[str], LogWatcher]
) -> None:
    exchange, queue = rabbitmq.exchange(), rabbitmq.queue()
    seen = Recorder()
    lost = watch_log("cancelled by the broker")
    resumed = watch_log("resumed")

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(body)

    async with running(Worker, config=rabbitmq.config()) as runtime:
        await _rabbit.delete(queues=[queue])
        await lost.wait()
        await resumed.wait()  # queue and binding redeclared, consuming again
        await AsyncPublisher(exchange, "rk", settings=rabbitmq.settings(runtime))({"x": 1})
        assert await seen.wait_for(1) == [{"x": 1}]


@pytest.mark.rabbitmq
async def test_start_waits_for_the_broker_and_publish_times_out_while_it_is_down(
    rabbitmq: Broker, watch_log: Callable[[str], LogWatcher]
) -> None:
    exchange, queue = rabbitmq.exchange(), rabbitmq.queue()
    seen = Recorder()
    proxy = TcpProxy(5672)
    uri = _rabbit.uri_on_port(proxy.port)
    refused = watch_log("cannot connect to")
    ready = watch_log("ready: worker")

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(body)

    config = rabbitmq.config(amqp_uri=uri, connect_retry_timeout=30)
    runtime = runtime_of(Worker, config=config)
    publish = AsyncPublisher(exchange, "rk", settings=config.service("worker"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.run)
        await refused.wait()  # the broker is unreachable: start-up keeps retrying
        assert not ready.event.is_set()
        lost = watch_log("lost (")
        async with anyio.create_task_group() as proxy_group:
            await proxy_group.start(proxy.serve)
            await ready.wait()
            await publish({"n": 1})
            assert await seen.wait_for(1) == [{"n": 1}]
            proxy_group.cancel_scope.cancel()  # the broker goes away again
        await lost.wait()
        with pytest.raises(PublishTimeout, match="not confirmed within"):
            await publish({"n": 2}, timeout=0.5)
        resumed = watch_log("resumed")
        async with anyio.create_task_group() as proxy_group:
            await proxy_group.start(proxy.serve)
            await resumed.wait()
            await publish({"n": 3})
            await seen.wait_for_unique(2)
            # At least once: {"n": 1} may come twice if its ack was cut off with the
            # connection; the publish that timed out was never sent.
            assert {item["n"] for item in seen.items} == {1, 3}
            runtime.stop()
            await anyio.wait_all_tasks_blocked()
            proxy_group.cancel_scope.cancel()


class _Proxied:
    """A service consuming through a proxy in front of RabbitMQ, and a publisher."""

    def __init__(self, proxy: TcpProxy, tg: TaskGroup, publish: AsyncPublisher) -> None:
        self.proxy = proxy
        self.publish = publish
        self.seen = Recorder()
        self._tg = tg
        self._serving: TaskGroup | None = None

    async def serve(self) -> None:
        """Start forwarding (again)."""
        self._serving = await self._tg.start(_serve_in_group, self.proxy)

    def cut(self) -> None:
        """Close the listener and every forwarded connection: the broker goes away."""
        assert self._serving is not None
        self._serving.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _proxied(rabbitmq: Broker) -> AsyncGenerator[tuple[_Proxied, Runtime]]:
    exchange, queue = rabbitmq.exchange(), rabbitmq.queue()
    proxy = TcpProxy(5672)
    config = rabbitmq.config(amqp_uri=_rabbit.uri_on_port(proxy.port))
    settings = config.service("worker")
    async with anyio.create_task_group() as tg:
        proxied = _Proxied(proxy, tg, AsyncPublisher(exchange, "rk", settings=settings))

        class Worker:
            @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
            async def handle(self, body: Any, message: Message) -> None:
                proxied.seen.add(body["n"])

        await proxied.serve()
        async with running(Worker, config=config) as runtime:
            yield proxied, runtime
        proxied.cut()


@pytest.mark.rabbitmq
async def test_a_publish_whose_confirm_is_held_times_out_and_the_next_goes_through(
    rabbitmq: Broker,
) -> None:
    """On a publishing channel already open (the way a publish starts with no task on
    trio): the deadline passes, `PublishTimeout`; a caller cancelled returns at once.
    Both messages were sent, and no deadline is left behind."""
    async with _proxied(rabbitmq) as (proxied, runtime):
        proxy, publish = proxied.proxy, proxied.publish
        with anyio.fail_after(20):
            await publish({"n": 1})
            proxy.hold_replies()
            with pytest.raises(PublishTimeout, match=r"not confirmed within 0\.3s"):
                await publish({"n": 2}, timeout=0.3)
            with anyio.move_on_after(0.3) as cancelled:
                await publish({"n": 3}, timeout=30)
            assert cancelled.cancelled_caught
            proxy.release_replies()
            await publish({"n": 4})
            assert sorted(await proxied.seen.wait_for(4)) == [1, 2, 3, 4]
        connection = await get_connection(rabbitmq.settings(runtime))
        assert isinstance(connection, AmqpConnection)
        deadlines = connection._engine._deadlines  # pyright: ignore[reportPrivateUsage]
        assert deadlines is not None
        assert not deadlines._watches  # pyright: ignore[reportPrivateUsage]


@pytest.mark.rabbitmq
async def test_a_publish_cut_off_before_its_confirm_is_sent_again_after_reconnecting(
    rabbitmq: Broker, watch_log: Callable[[str], LogWatcher]
) -> None:
    """On a publishing channel already open: the connection drops after the message
    went out and before its confirm came; the publish is retried on the new connection
    and returns. The message may arrive twice (at least once), never not at all."""
    retried = watch_log("interrupted")
    async with _proxied(rabbitmq) as (proxied, _), anyio.create_task_group() as tg:
        proxy, publish = proxied.proxy, proxied.publish
        with anyio.fail_after(30):
            await publish({"n": 1})
            proxy.hold_replies()
            done = anyio.Event()

            async def publish_then_say() -> None:
                await publish({"n": 2}, timeout=25)
                done.set()

            tg.start_soon(publish_then_say)
            await proxy.wait_sent(b'{"n":2}')
            proxied.cut()
            proxy.release_replies()
            await retried.wait()
            assert not done.is_set()
            await proxied.serve()
            await done.wait()
            await proxied.seen.wait_for_unique(2)
            assert set(proxied.seen.items) == {1, 2}


async def _serve_in_group(proxy: TcpProxy, *, task_status: TaskStatus[TaskGroup]) -> None:
    """Serve `proxy` in a task group of its own, handed to the caller to cancel."""
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        task_status.started(group)


@pytest.mark.rabbitmq
async def test_start_fails_clearly_when_the_broker_stays_down(rabbitmq: Broker) -> None:
    uri = _rabbit.uri_on_port(free_port())

    class Worker:
        @farine.amqp.consume(exchange=rabbitmq.exchange(), routing_key="rk")
        async def handle(self, body: Any, message: Message) -> None:
            raise AssertionError("never called")

    config = rabbitmq.config(amqp_uri=uri, connect_retry_timeout=0.5)
    with anyio.fail_after(20), pytest.raises(BaseException) as info:  # noqa: PT011
        await runtime_of(Worker, config=config).run()
    error = _single(info.value)
    assert isinstance(error, BrokerUnavailable)
    assert "cannot connect to the AMQP broker at amqp://guest:***@127.0.0.1" in str(error)
    assert "connect_retry_timeout = 0.5s" in str(error)


def _single(error: BaseException) -> BaseException:
    if isinstance(error, BaseExceptionGroup):
        inner = cast("tuple[BaseException, ...]", error.exceptions)  # pyright: ignore[reportUnknownMemberType]
        if len(inner) == 1:
            return _single(inner[0])
    return cast("BaseException", error)


async def test_execute_methods_first_run_once_every_service_consumes(broker: Broker) -> None:
    # Services start one after another: without waiting, the sender's method would run
    # before the receiver's queue is even declared, and its message would be unroutable.
    exchange, queue = broker.exchange(), broker.queue()
    received = Recorder()
    failures: list[BaseException] = []

    class Sender:
        @farine.execute.method(restart=False)
        @farine.amqp.publish(exchange=exchange, routing_key="rk")
        async def send(self, publish: farine.amqp.AsyncPublisher) -> None:
            try:
                await publish({"n": 1})  # mandatory: unroutable raises
            except Exception as exc:
                failures.append(exc)

    class Receiver:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def on_message(self, body: Any, message: Message) -> None:
            received.add(body["n"])

    async with farine.testing.running(Sender, Receiver, config=broker.config()):
        assert await received.wait_for(1) == [1]
    assert failures == []
