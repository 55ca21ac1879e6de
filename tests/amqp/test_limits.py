"""Limits of handler calls: time limits, concurrency caps, per-entrypoint drain deadlines.

On memory:// and RabbitMQ, on both backends. Time limits here are short deadlines the
code under test enforces; the tests wait for what they cause (a log line, a recorded
call), never for time to pass.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import farine.amqp
import farine.rpc
from farine import settings
from farine._limits import CallLimits
from farine.exceptions import ConfigurationError, RPCError, SettingsError
from farine.settings import Config
from tests.amqp.conftest import Broker, Recorder, running

if TYPE_CHECKING:
    from collections.abc import Callable

    from farine.amqp import Message
    from tests.amqp.conftest import LogWatcher

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_script_loop")]

TIMED_OUT = "ran past its time limit"


def _limit_records(watcher: LogWatcher) -> list[logging.LogRecord]:
    """The time limit's own warnings (the failure path then logs the error it raised)."""
    return [r for r in watcher.records if r.name == "farine.runtime"]


async def publish(runtime: Any, exchange: str, *bodies: Any, routing_key: str = "rk") -> None:
    assert runtime.config is not None
    publisher = farine.amqp.AsyncPublisher(
        exchange, routing_key, settings=runtime.config.service("tests")
    )
    for body in bodies:
        await publisher(body)


# -- time limits ------------------------------------------------------------------------


async def test_async_consumer_past_its_timeout_is_cancelled_and_its_message_retried(
    broker: Broker, watch_log: Callable[..., LogWatcher]
) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    calls = Recorder()
    cancelled = Recorder()
    timed_out = watch_log(TIMED_OUT)

    class Service:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, timeout=0.2)
        async def handle(self, body: dict[str, Any], message: Message) -> None:
            first = body["n"] not in {item[0] for item in calls.items}
            calls.add((body["n"], first))
            if body["n"] == 1 and first:
                try:
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    cancelled.add(body["n"])
                    raise

    async with running(Service, config=broker.config()) as runtime:
        await publish(runtime, exchange, {"n": 1}, {"n": 2})
        await timed_out.wait()
        assert await cancelled.wait_for(1) == [1]
        # The entrypoint went on, and the message that timed out failed like any other
        # failure: it was delivered again (and handled, this time).
        await calls.wait_for(3)
    assert sorted(calls.items) == [(1, False), (1, True), (2, True)]
    assert len(_limit_records(timed_out)) == 1
    assert await broker.ready(queue) == 0


async def test_def_consumer_past_its_timeout_is_abandoned_and_the_consumer_goes_on(
    broker: Broker, watch_log: Callable[..., LogWatcher]
) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    calls = Recorder()
    release = threading.Event()
    timed_out = watch_log(TIMED_OUT)

    class Service:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue, timeout=0.2)
        def handle(self, body: dict[str, Any], message: Message) -> None:
            first = body["n"] not in {item[0] for item in calls.items}
            calls.add((body["n"], first))
            if body["n"] == 1 and first:
                release.wait(30)  # a blocking call no one can interrupt

    try:
        async with running(Service, config=broker.config()) as runtime:
            await publish(runtime, exchange, {"n": 1}, {"n": 2})
            await timed_out.wait()
            # Handled again, and the other message too, while the first call still
            # blocks its abandoned thread.
            await calls.wait_for(3)
            assert not release.is_set()
    finally:
        release.set()
    assert sorted(calls.items) == [(1, False), (1, True), (2, True)]
    assert await broker.ready(queue) == 0


async def test_handler_timeout_setting_applies_and_the_decorator_overrides_it(
    broker: Broker, watch_log: Callable[..., LogWatcher]
) -> None:
    exchange = broker.exchange()
    q_limited, q_unlimited = broker.queue("limited"), broker.queue("unlimited")
    done = Recorder()
    timed_out = watch_log(TIMED_OUT)

    class Service:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=q_limited)
        async def limited(self, body: Any, message: Message) -> None:
            if not message.redelivered and "limited" not in done.items:
                done.add("limited")
                await anyio.sleep_forever()

        @farine.amqp.consume(
            exchange=exchange, routing_key="rk", queue=q_unlimited, timeout=float("inf")
        )
        async def unlimited(self, body: Any, message: Message) -> None:
            await timed_out.event.wait()  # outlives the setting's limit
            done.add("unlimited")

    async with running(Service, config=broker.config(handler_timeout=0.2)) as runtime:
        await publish(runtime, exchange, {"n": 1})
        await timed_out.wait()
        await done.wait_for(2)
    limit_records = _limit_records(timed_out)
    assert len(limit_records) == 1
    assert "limited" in limit_records[0].getMessage()
    assert await broker.ready(q_unlimited) == 0


async def test_rpc_method_past_its_timeout_fails_the_call_with_handler_timeout(
    broker: Broker,
) -> None:
    name = f"limits{uuid.uuid4().hex[:8]}"
    broker.exchanges.append(name)
    broker.queues.extend(f"{name}__{method}" for method in ("slow", "blocking"))
    release = threading.Event()

    class Service:
        @farine.rpc.method(timeout=0.2)
        async def slow(self) -> None:
            await anyio.sleep_forever()

        @farine.rpc.method(timeout=0.2)
        def blocking(self) -> str:
            release.wait(30)
            return "late"

    service = type(name, (Service,), {})
    config = broker.config()
    settings.use(config)
    try:
        async with running(service, config=config), farine.rpc.Client(name, timeout=30) as rpc:
            for method in ("slow", "blocking"):
                with pytest.raises(RPCError) as caught:
                    await getattr(rpc, method)()
                assert caught.value.remote_type == "HandlerTimeout"
                assert TIMED_OUT in (caught.value.remote_message or "")
    finally:
        release.set()


async def test_rpc_caller_deadline_shorter_than_the_method_timeout_wins(
    broker: Broker, watch_log: Callable[..., LogWatcher]
) -> None:
    name = f"limits{uuid.uuid4().hex[:8]}"
    broker.exchanges.append(name)
    broker.queues.append(f"{name}__slow")
    cancelled = watch_log("its deadline passed")

    class Service:
        @farine.rpc.method(timeout=60)
        async def slow(self) -> None:
            await anyio.sleep_forever()

    service = type(name, (Service,), {})
    config = broker.config()
    settings.use(config)
    async with running(service, config=config):
        async with farine.rpc.Client(name, timeout=0.3) as rpc:
            with pytest.raises(RPCError) as caught:
                await rpc.slow()
        assert caught.value.remote_type is None  # the caller's own timeout
        # The server cancelled the call at its caller's deadline, not at its own limit.
        await cancelled.wait()


# -- concurrency caps -------------------------------------------------------------------


class _Gauge:
    """Counts the calls running at once (from any thread) and keeps the highest count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.now -= 1


@pytest.mark.parametrize("kind", ["def", "async"])
async def test_consumer_max_concurrency_bounds_calls_below_the_prefetch(
    broker: Broker, kind: str
) -> None:
    exchange, queue = broker.exchange(), broker.queue()
    gauge = _Gauge()
    entered = Recorder()
    finished = Recorder()
    gates = [threading.Event() for _ in range(8)]

    def work(n: int) -> None:
        with gauge:
            entered.add(n)
            gates[n].wait(30)
        finished.add(n)

    capped = farine.amqp.consume(
        exchange=exchange, routing_key="rk", queue=queue, prefetch=8, max_concurrency=2
    )

    class SyncService:
        @capped
        def handle(self, body: dict[str, int], message: Message) -> None:
            work(body["n"])

    class AsyncService:
        @capped
        async def handle(self, body: dict[str, int], message: Message) -> None:
            await anyio.to_thread.run_sync(work, body["n"])

    service = SyncService if kind == "def" else AsyncService

    try:
        async with running(service, config=broker.config(max_workers=8)) as runtime:
            await publish(runtime, exchange, *({"n": n} for n in range(8)))
            await entered.wait_for(2)
            # Messages beyond the cap wait in the prefetch buffer, not in a call.
            await anyio.wait_all_tasks_blocked()
            assert runtime.services[service.__name__.lower()].in_flight == 2
            for step in range(8):
                running_now = int(entered.items[step])
                gates[running_now].set()
                await finished.wait_for(step + 1)
                if step + 2 < 8:
                    await entered.wait_for(step + 3)
    finally:
        for gate in gates:
            gate.set()
    assert gauge.most == 2
    assert sorted(finished.items) == list(range(8))


async def test_rpc_max_concurrency_bounds_calls(broker: Broker) -> None:
    name = f"limits{uuid.uuid4().hex[:8]}"
    broker.exchanges.append(name)
    broker.queues.append(f"{name}__work")
    gauge = _Gauge()
    entered = Recorder()
    open_gate = anyio.Event()

    class Service:
        @farine.rpc.method(prefetch=6, max_concurrency=1)
        async def work(self, n: int) -> int:
            with gauge:
                entered.add(n)
                await open_gate.wait()
            return n

    service = type(name, (Service,), {})
    config = broker.config()
    settings.use(config)
    results: list[int] = []
    async with running(service, config=config), farine.rpc.Client(name, timeout=30) as rpc:

        async def call(n: int) -> None:
            results.append(await rpc.work(n))

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(call, n)
            await entered.wait_for(1)
            await anyio.wait_all_tasks_blocked()
            assert len(entered.items) == 1
            open_gate.set()
    assert gauge.most == 1
    assert sorted(results) == list(range(6))


# -- per-entrypoint drain deadlines -----------------------------------------------------


@pytest.mark.parametrize(
    ("service_grace", "short_grace", "long_grace"),
    [(30, 0.1, None), (0.1, None, 30)],
    ids=["shorter-than-the-service", "longer-than-the-service"],
)
async def test_entrypoint_shutdown_timeout_cancels_only_its_own_calls(
    broker: Broker,
    watch_log: Callable[..., LogWatcher],
    service_grace: float,
    short_grace: float | None,
    long_grace: float | None,
) -> None:
    exchange = broker.exchange()
    q_short, q_long = broker.queue("short"), broker.queue("long")
    started = Recorder()
    outcome = Recorder()
    let_long_finish = anyio.Event()
    short_cut = watch_log("entrypoint service.short: shutdown_timeout (0.1s) reached")

    class Service:
        @farine.amqp.consume(
            exchange=exchange, routing_key="rk", queue=q_short, shutdown_timeout=short_grace
        )
        async def short(self, body: Any, message: Message) -> None:
            started.add("short")
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                outcome.add("short cancelled")
                raise

        @farine.amqp.consume(
            exchange=exchange, routing_key="rk", queue=q_long, shutdown_timeout=long_grace
        )
        async def long(self, body: Any, message: Message) -> None:
            started.add("long")
            await let_long_finish.wait()
            outcome.add("long finished")

    config = broker.config(shutdown_timeout=service_grace)
    async with running(Service, config=config) as runtime:
        await publish(runtime, exchange, {"n": 1})
        await started.wait_for(2)
        runtime.stop()
        await short_cut.wait()
        # Its sibling's call still runs: its own deadline is 30 s away (and the
        # service's scope leaves room for it, whatever the service's setting).
        assert outcome.items == ["short cancelled"]
        let_long_finish.set()
    assert outcome.items == ["short cancelled", "long finished"]


# -- declarations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"timeout": "5"}, "timeout must be a number of seconds > 0"),
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"shutdown_timeout": -1}, "shutdown_timeout must be a number of seconds >= 0"),
    ],
)
def test_bad_limits_are_refused_at_declaration(arguments: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        farine.amqp.consume(exchange="x", **arguments)
    with pytest.raises(ConfigurationError, match=match):
        farine.rpc.method(**arguments)


def test_handler_timeout_setting_must_be_positive() -> None:
    config = Config.from_string("[DEFAULT]\nhandler_timeout = 0\n")
    with pytest.raises(SettingsError, match="handler_timeout"):
        config.service("x")
    assert Config.from_string("[DEFAULT]\nhandler_timeout =\n").service("x").handler_timeout is None


def _limits(timeout: float | None, uri: str) -> tuple[CallLimits, Any]:
    config = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\n")
    service = config.service("svc")
    return CallLimits.resolve("svc.handle", service, timeout=timeout), service


def test_a_limit_beyond_the_broker_consumer_timeout_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="farine")
    limits, service = _limits(3600, "amqp://guest:guest@127.0.0.1/")
    limits.check_consumer_timeout(service, "q")
    assert "exceeds the 1800s" in caplog.text
    assert "RabbitMQ's default consumer_timeout" in caplog.text
    caplog.clear()
    limits.check_consumer_timeout(service, "q", {"x-consumer-timeout": 60_000})
    assert "exceeds the 60s" in caplog.text
    caplog.clear()
    # Within the queue's own limit, on memory://, or with no limit: nothing to say.
    limits.check_consumer_timeout(service, "q", {"x-consumer-timeout": 7_200_000})
    memory_limits, memory = _limits(3600, "memory://")
    memory_limits.check_consumer_timeout(memory, "q")
    unlimited, _ = _limits(None, "amqp://guest:guest@127.0.0.1/")
    unlimited.check_consumer_timeout(service, "q")
    assert caplog.text == ""


def test_max_concurrency_never_raises_the_tasks_above_the_prefetch() -> None:
    service = Config.from_string("[DEFAULT]\nmax_concurrency = 4\n").service("svc")
    assert CallLimits.resolve("s.h", service, timeout=None).tasks(64) == 4
    assert CallLimits.resolve("s.h", service, timeout=None).tasks(2) == 2
    assert CallLimits.resolve("s.h", service, timeout=None, max_concurrency=8).tasks(64) == 8
    plain = Config.from_string("[DEFAULT]\n").service("svc")
    assert CallLimits.resolve("s.h", plain, timeout=None).tasks(64) == 64


def test_limits_are_described_for_the_startup_log_and_cost_nothing_when_absent() -> None:
    assert CallLimits("s.h", 2.5, 4).describe() == ", timeout 2.5s, max_concurrency 4"
    assert CallLimits("s.h").describe() == ""

    async def call() -> None: ...

    assert CallLimits("s.h").applied_to(call) is call
    assert CallLimits("s.h", 1.0).applied_to(call) is not call
