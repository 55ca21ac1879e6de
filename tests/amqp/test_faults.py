"""Faults between farine and RabbitMQ, injected by a proxy, on both paths and backends.

A half-open connection (the broker goes silent, the socket stays open) is found by the
heartbeats and replaced once the network heals; a connection cut in the middle of a
frame, at many offsets, never confuses the frame reader. Messages are published
straight to the broker (confirmed), consumed through the proxy: none may be lost.
"""

from __future__ import annotations

import contextlib
import signal
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest

import farine.amqp
from farine.amqp import AsyncPublisher, Message
from tests._proc import FarineProcess
from tests.amqp import _rabbit
from tests.amqp._faults import FaultProxy, serving_proxy
from tests.amqp.conftest import Broker, LogWatcher, Recorder, running

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable
    from pathlib import Path


pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq, pytest.mark.slow]

#: The heartbeat of the proxied connections, in seconds.
HEARTBEAT = 1

#: What a frame read wrong would raise (pamqp's and aiormq's parse errors).
_MISREAD = ("InvalidFrame", "Unpacking", "ProtocolSyntax", "UnexpectedFrame", "decode")


@pytest.fixture(params=["on", "off"])
def fast_path(request: pytest.FixtureRequest) -> str:
    return cast(str, request.param)


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    async with serving_proxy() as found:
        yield found


@pytest.fixture
def never_retrieved(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The log lines of errors nobody awaited ("exception was never retrieved") so far."""
    caplog.set_level("ERROR", logger="asyncio")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]

    return lines


@contextlib.asynccontextmanager
async def _consuming_through(
    rabbitmq: Broker, proxy: FaultProxy, fast_path: str
) -> AsyncGenerator[tuple[Recorder, AsyncPublisher]]:
    """A worker consuming through `proxy` (recording each body's `n`), and a publisher
    straight to the broker (confirmed); the block must end within 60 s."""
    exchange, queue = rabbitmq.exchange(), rabbitmq.queue()
    seen = Recorder()

    class Worker:
        @farine.amqp.consume(exchange=exchange, routing_key="rk", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(body["n"])

    config = rabbitmq.config(
        amqp_uri=_rabbit.uri_on_port(proxy.port),
        heartbeat=HEARTBEAT,
        connect_timeout=1,
        amqp_fast_path=fast_path,
    )
    direct = rabbitmq.config(amqp_fast_path=fast_path).service("publisher")
    publish = AsyncPublisher(exchange, "rk", settings=direct)
    with anyio.fail_after(60):
        async with running(Worker, config=config):
            yield seen, publish


async def test_a_silent_broker_is_found_by_heartbeats_and_nothing_confirmed_is_lost(
    rabbitmq: Broker,
    proxy: FaultProxy,
    fast_path: str,
    watch_log: Callable[[str], LogWatcher],
    never_retrieved: Callable[[], list[str]],
) -> None:
    async with _consuming_through(rabbitmq, proxy, fast_path) as (seen, publish):
        for n in range(20):
            await publish({"n": n})
        await seen.wait_for_unique(20)
        lost = watch_log("lost (")
        proxy.blackhole()  # the broker goes silent; the socket stays open
        silent_at = anyio.current_time()
        for n in range(20, 40):
            await publish({"n": n})  # confirmed by the broker, not delivered yet
        await lost.wait()
        found_after = anyio.current_time() - silent_at
        reconnected = watch_log("reconnected to")
        proxy.heal()
        await reconnected.wait()
        await seen.wait_for_unique(40)
    # Three missed heartbeats, with a margin for a loaded machine.
    assert found_after < 3 * HEARTBEAT + 3
    assert set(seen.items) == set(range(40))
    assert proxy.accepted >= 2
    assert never_retrieved() == []


@pytest.mark.parametrize("cut_at", [64, 128, 256, 512, 1024, 2048, 4096])
async def test_a_connection_cut_mid_frame_loses_nothing_and_confuses_nothing(
    rabbitmq: Broker,
    proxy: FaultProxy,
    fast_path: str,
    cut_at: int,
    watch_log: Callable[[str], LogWatcher],
    never_retrieved: Callable[[], list[str]],
) -> None:
    """1 KiB messages flow to the consumer; its connection is cut `cut_at` bytes later."""
    pad = "x" * 1000
    async with _consuming_through(rabbitmq, proxy, fast_path) as (seen, publish):
        lost = watch_log("lost (")
        reconnected = watch_log("reconnected to")
        for n in range(10):
            await publish({"n": n, "pad": pad})
        await seen.wait_for_unique(10)
        proxy.cut_after(cut_at)
        for n in range(10, 60):
            await publish({"n": n, "pad": pad})
        await lost.wait()
        await reconnected.wait()
        await seen.wait_for_unique(60)
    assert set(seen.items) == set(range(60))
    assert never_retrieved() == []
    # Lost to the cut itself (reset, or a frame cut short), never to a frame read wrong.
    assert lost.records
    for record in lost.records:
        text = record.getMessage()
        assert "AMQPConnectionError" in text, text
        assert not any(wrong in text for wrong in _MISREAD), text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_sigterm_stops_the_process_in_time_while_the_broker_is_silent(
    rabbitmq: Broker, proxy: FaultProxy, backend: str, tmp_path: Path
) -> None:
    name = rabbitmq.queue()
    config = tmp_path / "farine.ini"
    config.write_text(
        "[DEFAULT]\n"
        f"amqp_uri = {_rabbit.uri_on_port(proxy.port)}\n"
        "heartbeat = 30\n"  # not found by heartbeats within the test: truly silent
        "shutdown_timeout = 3\n"
    )
    process = FarineProcess(
        "start", "ledger", "--backend", backend,
        env={"FARINE_INI": str(config), "LEDGER_NAME": name},
    )  # fmt: skip
    try:
        await anyio.to_thread.run_sync(process.wait_for, r"farine\.runtime: ready: ", 30)
        publish = AsyncPublisher(name, "rk", settings=rabbitmq.config().service("publisher"))
        await publish({"n": 1})
        await anyio.to_thread.run_sync(process.wait_for, r"handled 1", 30)
        proxy.blackhole()
        await publish({"n": 2})  # held by the silent proxy: in flight at the stop
        stopping_at = anyio.current_time()
        process.signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(process.wait, 30)
        took = anyio.current_time() - stopping_at
    finally:
        process.kill()
    assert code == 0, process.output
    # shutdown_timeout (3 s), then closing the silent connection: aiormq gives its reader
    # two seconds to finish. About 5.3 s measured; a margin for a loaded machine.
    assert took < 3 + 2 + 3, process.output
    await _rabbit.delete(queues=[name], exchanges=[name])
