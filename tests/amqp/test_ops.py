"""The operations endpoint in a running process: `/livez`, `/readyz` and `/metrics`,
on memory:// and RabbitMQ, on asyncio and trio."""

from __future__ import annotations

import contextlib
import subprocess
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import farine.amqp
import farine.rpc
import farine.stream
import farine.testing
from tests.amqp import _rabbit
from tests.amqp._proxy import TcpProxy, free_port

if TYPE_CHECKING:
    from collections.abc import Generator

    from farine.amqp import Message
    from farine.runtime import Runtime
    from tests.amqp.conftest import Broker

pytestmark = pytest.mark.anyio


def _url(runtime: Runtime, path: str) -> str:
    assert runtime.ops is not None, "the operations endpoint is not on"
    return runtime.ops.url + path


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a `/metrics` page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _outcomes(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], service: str, entrypoint: str
) -> dict[str, float]:
    """`farine_messages_total` of one entrypoint, by outcome."""
    return {
        outcome: _value(
            samples,
            "farine_messages_total",
            service=service,
            entrypoint=entrypoint,
            outcome=outcome,
        )
        for outcome in ("acked", "rejected", "requeued", "retried", "dead_lettered")
    }


async def _wait_status(client: httpx.AsyncClient, url: str, status: int) -> dict[str, Any]:
    """Ask `url` until it answers `status` (a state the test waits for); its JSON body."""
    with anyio.fail_after(20):
        while True:
            try:
                response = await client.get(url)
            except httpx.TransportError:  # not listening yet
                response = None
            if response is not None and response.status_code == status:
                return response.json()
            await anyio.sleep(0.02)


async def test_livez_readyz_and_metrics_answer_once_ready(broker: Broker) -> None:
    exchange = broker.exchange()

    class Ops:
        @farine.amqp.consume(exchange=exchange, routing_key="k", queue=broker.queue())
        def on_message(self, body: Any, message: Message) -> None:
            pass

    config = broker.config(http="127.0.0.1:0")
    async with farine.testing.running(Ops, config=config) as app, httpx.AsyncClient() as client:
        live = await client.get(_url(app.runtime, "/livez"))
        ready = await client.get(_url(app.runtime, "/readyz"))
        metrics = await client.get(_url(app.runtime, "/metrics"))
        missing = await client.get(_url(app.runtime, "/nothing"))
    assert (live.status_code, live.text) == (200, "ok\n")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(metrics.text)
    assert _value(samples, "farine_connection_state", service="ops") == 1
    assert _value(samples, "farine_worker_threads_busy", service="ops") == 0
    assert missing.status_code == 404


async def test_metrics_count_each_outcome_and_time_the_calls(broker: Broker) -> None:
    exchange = broker.exchange()

    class Counted:
        # baguette-messaging's rule: a failure is requeued once, then rejected.
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="k",
            queue=broker.queue(),
            retry=farine.amqp.Retry.seed(),
            dead_letter=False,
        )
        def on_message(self, body: dict[str, str], message: Message) -> None:
            if body["kind"] == "reject":
                message.reject(requeue=False)
            elif body["kind"] == "requeue-once" and not message.redelivered:
                message.nack(requeue=True)
            elif body["kind"] == "fail":
                raise ValueError("fails twice: requeued once, then rejected")

    config = broker.config(http="127.0.0.1:0")
    async with farine.testing.running(Counted, config=config) as app, httpx.AsyncClient() as client:
        for kind in ("ok", "reject", "requeue-once", "fail", "ok"):
            await app.publish(exchange, "k", {"kind": kind})
        # ok, reject, requeue-once (twice), fail (twice), ok: seven handler calls.
        await app.wait_for("counted.on_message", count=7)
        url = _url(app.runtime, "/metrics")
        expected = {"acked": 3, "rejected": 2, "requeued": 2}
        with anyio.fail_after(10):
            while True:  # a message is counted once settled, just after its call
                samples = _samples((await client.get(url)).text)
                counts = _outcomes(samples, "counted", "on_message")
                if counts == {**expected, "retried": 0, "dead_lettered": 0}:
                    break
                await anyio.sleep(0.02)
    labels = {"service": "counted", "entrypoint": "on_message"}
    assert _value(samples, "farine_handler_seconds_count", **labels) == 7
    assert _value(samples, "farine_handler_seconds_sum", **labels) > 0
    assert _value(samples, "farine_handler_seconds_bucket", **labels, le="+Inf") == 7
    assert _value(samples, "farine_handlers_in_flight", **labels) == 0


async def test_metrics_show_the_handler_calls_in_flight(broker: Broker) -> None:
    exchange = broker.exchange()
    started = anyio.Event()
    release = anyio.Event()

    class Held:
        @farine.amqp.consume(exchange=exchange, routing_key="k", queue=broker.queue())
        async def on_message(self, body: Any, message: Message) -> None:
            started.set()
            await release.wait()

    config = broker.config(http="127.0.0.1:0")
    labels = {"service": "held", "entrypoint": "on_message"}
    async with farine.testing.running(Held, config=config) as app, httpx.AsyncClient() as client:
        url = _url(app.runtime, "/metrics")
        await app.publish(exchange, "k", {"n": 1})
        with anyio.fail_after(10):
            await started.wait()
        during = _samples((await client.get(url)).text)
        release.set()
        await app.wait_for("held.on_message")
        with anyio.fail_after(10):
            while True:  # the call ends just after the handler returns
                after = _samples((await client.get(url)).text)
                if _value(after, "farine_handlers_in_flight", **labels) == 0:
                    break
                await anyio.sleep(0.02)
    assert _value(during, "farine_handlers_in_flight", **labels) == 1
    assert _value(after, "farine_handler_seconds_count", **labels) == 1


async def test_metrics_count_retried_and_dead_lettered_messages(broker: Broker) -> None:
    exchange = broker.exchange()

    class Failing:
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="k",
            queue=broker.queue(),
            retry=farine.amqp.Retry(attempts=3, backoff=[0.05, 0.05]),
        )
        def on_message(self, body: Any, message: Message) -> None:
            raise ConnectionError("the database is down")

    config = broker.config(http="127.0.0.1:0")
    async with farine.testing.running(Failing, config=config) as app, httpx.AsyncClient() as client:
        for n in range(2):
            await app.publish(exchange, "k", {"n": n})
        # Each message: two attempts retried through a delay queue, the third dead-lettered.
        await app.wait_for("failing.on_message", count=6)
        url = _url(app.runtime, "/metrics")
        with anyio.fail_after(10):
            while True:  # a message is counted once moved, just after its call
                samples = _samples((await client.get(url)).text)
                counts = _outcomes(samples, "failing", "on_message")
                if counts["dead_lettered"] == 2:
                    break
                await anyio.sleep(0.02)
    assert counts == {"acked": 0, "rejected": 0, "requeued": 0, "retried": 4, "dead_lettered": 2}


async def test_readyz_says_503_from_the_moment_a_stop_begins(broker: Broker) -> None:
    exchange = broker.exchange()
    started, release = anyio.Event(), anyio.Event()

    class Draining:
        @farine.amqp.consume(exchange=exchange, routing_key="k", queue=broker.queue())
        async def on_message(self, body: Any, message: Message) -> None:
            started.set()
            await release.wait()

    config = broker.config(http="127.0.0.1:0")
    async with (
        farine.testing.running(Draining, config=config) as app,
        httpx.AsyncClient() as client,
    ):
        url = _url(app.runtime, "/readyz")
        assert (await client.get(url)).status_code == 200
        await app.publish(exchange, "k", {})
        with anyio.fail_after(10):
            await started.wait()
        app.runtime.stop()  # as SIGTERM does: the call in flight drains meanwhile
        response = await client.get(url)
        release.set()
    assert response.status_code == 503
    assert response.json() == {"ready": False, "not_ready": {"runtime": "stopping"}}


async def test_readyz_says_503_until_the_broker_answers(rabbitmq: Broker) -> None:
    proxy = TcpProxy(5672)  # not serving yet: the consumer cannot start
    port = free_port()

    class Waiting:
        @farine.amqp.consume(exchange=rabbitmq.exchange(), routing_key="k", queue=rabbitmq.queue())
        def on_message(self, body: Any, message: Message) -> None:
            pass

    config = rabbitmq.config(amqp_uri=_rabbit.uri_on_port(proxy.port), http=f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/readyz"
    ready = anyio.Event()

    async def run_app() -> None:
        async with farine.testing.running(Waiting, config=config):
            ready.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
        tg.start_soon(run_app)
        body = await _wait_status(client, url, 503)
        assert body["ready"] is False
        assert body["not_ready"]["runtime"] == "starting"
        assert body["not_ready"]["waiting.on_message"] == "starting"
        await tg.start(proxy.serve)
        with anyio.fail_after(20):
            await ready.wait()
        assert await _wait_status(client, url, 200) == {"ready": True}
        tg.cancel_scope.cancel()


@contextlib.contextmanager
def _refused_logins(vhost: str) -> Generator[None]:
    """Refuse this test's virtual host to guest until the block ends (only ours)."""
    subprocess.run(["rabbitmqctl", "-q", "clear_permissions", "-p", vhost, "guest"], check=True)
    try:
        yield
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
        )


async def test_readyz_says_503_during_a_reconnection(rabbitmq: Broker) -> None:
    exchange = rabbitmq.exchange()

    class Reconnecting:
        @farine.amqp.consume(exchange=exchange, routing_key="k", queue=rabbitmq.queue())
        def on_message(self, body: Any, message: Message) -> None:
            pass

    vhost = httpx.URL(_rabbit.RABBITMQ_URI).path.removeprefix("/") or "/"
    config = rabbitmq.config(http="127.0.0.1:0")
    async with (
        farine.testing.running(Reconnecting, config=config) as app,
        httpx.AsyncClient() as client,
    ):
        url = _url(app.runtime, "/readyz")
        assert (await client.get(url)).status_code == 200
        # While logins are refused the process cannot reconnect: not ready, for as long
        # as the test looks.
        with _refused_logins(vhost):
            await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "farine ops test"],
                    check=True,
                )
            )
            body = await _wait_status(client, url, 503)
            metrics = _samples((await client.get(_url(app.runtime, "/metrics"))).text)
        assert "reconnecting.on_message" in body["not_ready"]
        assert _value(metrics, "farine_connection_state", service="reconnecting") == 0
        assert await _wait_status(client, url, 200) == {"ready": True}
        metrics = _samples((await client.get(_url(app.runtime, "/metrics"))).text)
    assert _value(metrics, "farine_connection_state", service="reconnecting") == 1
    assert _value(metrics, "farine_reconnects_total", service="reconnecting") == 1


async def test_metrics_time_publishes_and_rpc_calls_on_both_sides(broker: Broker) -> None:
    exchange, out = broker.exchange(), broker.exchange("out")
    outbox = broker.queue("outbox")

    class Rpcops:
        @farine.rpc.method()
        def double(self, n: int) -> int:
            if n < 0:
                raise ValueError("negative")
            return 2 * n

        @farine.amqp.consume(exchange=exchange, routing_key="k", queue=broker.queue())
        async def on_message(self, body: dict[str, int], message: Message) -> None:
            await self.call_and_publish(body["n"])

        @farine.amqp.consume(exchange=out, routing_key="done", queue=outbox)
        def on_done(self, body: Any, message: Message) -> None:
            pass

        @farine.rpc.client("rpcops", timeout=10)
        @farine.amqp.publish(exchange=out, routing_key="done")
        async def call_and_publish(
            self, publish: farine.amqp.AsyncPublisher, rpc: farine.rpc.AsyncClient, n: int
        ) -> None:
            with contextlib.suppress(farine.rpc.RemoteError):
                await publish({"doubled": await rpc.double(n)})
            with contextlib.suppress(farine.amqp.UnroutableError):
                await publish({"nobody": "listens"}, routing_key="nowhere")

    config = broker.config(http="127.0.0.1:0")
    async with farine.testing.running(Rpcops, config=config) as app, httpx.AsyncClient() as client:
        await app.publish(exchange, "k", {"n": 2})
        await app.publish(exchange, "k", {"n": -1})
        await app.publish(exchange, "k", {"n": 3})
        await app.wait_for("rpcops.on_message", count=3)
        samples = _samples((await client.get(_url(app.runtime, "/metrics"))).text)

    def count(name: str, **labels: str) -> float:
        return _value(samples, name + "_count", **labels)

    assert count("farine_rpc_client_seconds", service="rpcops", method="double", outcome="ok") == 2
    assert (
        count("farine_rpc_client_seconds", service="rpcops", method="double", outcome="error") == 1
    )
    assert count("farine_rpc_server_seconds", service="rpcops", method="double", outcome="ok") == 2
    assert (
        count("farine_rpc_server_seconds", service="rpcops", method="double", outcome="error") == 1
    )
    # One confirmed publish per answered call; each "nowhere" publish came back unroutable.
    assert count("farine_publish_seconds", service="rpcops") == 2
    assert _value(samples, "farine_publish_errors_total", service="rpcops", kind="unroutable") == 3


async def test_metrics_count_each_sse_event_of_a_listener(broker: Broker) -> None:
    class Feed:
        @farine.stream.http(endpoint="https://prices.example.com/events")
        async def on_price(self, data: dict[str, int]) -> None:
            pass

    transport = farine.testing.sse_transport([{"price": 1}, {"price": 2}, {"price": 3}])
    config = broker.config(http="127.0.0.1:0")
    async with (
        farine.testing.running(Feed, config=config, http_transport=transport) as app,
        httpx.AsyncClient() as client,
    ):
        await app.wait_for("feed.on_price", count=3)
        samples = _samples((await client.get(_url(app.runtime, "/metrics"))).text)
    assert _value(samples, "farine_sse_events_total", service="feed", entrypoint="on_price") == 3
