"""The pace of an RPC stream (docs/rpc-streaming.md, "Deadline and pace").

A farine server sends at most a window of items ahead of its reader (the reader's credit
messages open it); a server that does not wait for its reader (baguette-messaging's)
ends the stream with an error once the reader's buffer is full.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import farine.amqp
import farine.rpc
from farine import settings
from farine._broker.interface import Outgoing
from farine._broker.message import Message, Properties
from farine._connections import get_connection
from farine.exceptions import RPCError
from farine.rpc._protocol import encode_item
from tests.amqp.conftest import Broker, LogWatcher, Recorder, instance_of, running
from tests.amqp.test_rpc import serve, unique

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_script_loop")]

WINDOW = 8


class Firehose:
    """Streams `n` items as fast as the caller lets it, counting what it produced."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.produced = 0
        self.closed = Recorder()

    def _made(self) -> None:
        with self.lock:
            self.produced += 1

    @farine.rpc.method()
    def items(self, n: int) -> Generator[int]:
        try:
            for i in range(n):
                self._made()
                yield i
        finally:
            self.closed.add("items")

    @farine.rpc.method()
    async def aitems(self, n: int) -> AsyncGenerator[int]:
        try:
            for i in range(n):
                self._made()
                yield i
        finally:
            self.closed.add("aitems")


@contextlib.asynccontextmanager
async def firehose(broker: Broker, deadline: float = 30) -> AsyncGenerator[tuple[Firehose, Any]]:
    """Serve a `Firehose` with a window of `WINDOW`; yield it and a client (calls of
    `deadline` seconds)."""
    svc = unique(Firehose, broker)
    async with (
        serve(svc, broker=broker, rpc_stream_window=WINDOW) as runtime,
        farine.rpc.Client(svc.__name__, timeout=deadline) as rpc,
    ):
        instance = instance_of(runtime, svc.__name__, Firehose)
        yield instance, rpc


@pytest.mark.parametrize("method", ["items", "aitems"])
async def test_a_slow_reader_holds_the_server_back_and_gets_every_item(
    broker: Broker, method: str, watch_log: Callable[[str], LogWatcher]
) -> None:
    waits = watch_log("waits for its caller")
    count = 5 * WINDOW + 3
    async with firehose(broker) as (instance, rpc):
        with anyio.fail_after(30):
            async with contextlib.aclosing(rpc.call(method, count, __stream__=True)) as stream:
                got = [await stream.__anext__()]
                # The reader stops reading: the server fills the window and waits.
                await waits.wait()
                assert instance.produced == WINDOW
                got += [item async for item in stream]
    assert got == list(range(count))
    # Past the first window, only the reader's credits let the server go on.
    assert instance.closed.items == [method]


async def test_a_slow_blocking_reader_holds_the_server_back_too(
    broker: Broker, watch_log: Callable[[str], LogWatcher]
) -> None:
    waits = watch_log("waits for its caller")
    count = 3 * WINDOW
    async with firehose(broker) as (instance, rpc):
        name = rpc.service

        def read() -> tuple[list[int], int]:
            # As a `def` method or a script reads a stream: a plain generator.
            items = farine.rpc.Client(name, timeout=30).items(count, __stream__=True)
            got = [next(items)]
            anyio.from_thread.run(waits.wait)
            produced = instance.produced
            got += list(items)
            return got, produced

        with anyio.fail_after(30):
            got, produced_while_waiting = await anyio.to_thread.run_sync(read)
    assert produced_while_waiting == WINDOW
    assert got == list(range(count))


@pytest.mark.parametrize("method", ["items", "aitems"])
async def test_a_reader_that_leaves_while_the_server_waits_stops_it(
    broker: Broker, method: str, watch_log: Callable[[str], LogWatcher]
) -> None:
    waits = watch_log("waits for its caller")
    stopped = watch_log("caller stopped stream")
    async with firehose(broker) as (instance, rpc):
        with anyio.fail_after(30):
            stream = rpc.call(method, 1_000_000, __stream__=True)
            assert await stream.__anext__() == 0
            await waits.wait()
            await stream.aclose()
            await stopped.wait()
            assert await instance.closed.wait_for(1) == [method]
            assert await rpc.items(2) == 0  # still serving (a plain call: one item)
    assert instance.produced == WINDOW + 1


async def test_a_deadline_passing_while_the_server_waits_ends_both_sides(
    broker: Broker, watch_log: Callable[[str], LogWatcher]
) -> None:
    waits = watch_log("waits for its caller")
    async with firehose(broker, deadline=1) as (instance, rpc):
        with anyio.fail_after(30):
            async with contextlib.aclosing(rpc.aitems(1_000_000, __stream__=True)) as stream:
                assert await stream.__anext__() == 0
                await waits.wait()
                with pytest.raises(RPCError, match="timeout"):
                    async for _ in stream:
                        pass
            # The server's generator is closed by the deadline, or by the cancel.
            assert await instance.closed.wait_for(1) == ["aitems"]


class Unpaced:
    """A server that does not wait for its reader, as baguette-messaging's did."""

    def __init__(self) -> None:
        self.sent = Recorder()

    @farine.amqp.consume(exchange="unpaced", routing_key="unpaced__items")
    async def items(self, body: dict[str, Any], message: Message) -> None:
        [n] = body["args"]
        assert message.reply_to is not None
        connection = await get_connection(settings.get("unpaced"))
        properties = Properties(correlation_id=message.correlation_id)
        for i in range(n):
            await connection.publish(
                Outgoing("", message.reply_to, encode_item(i), properties, mandatory=False)
            )
        self.sent.add(n)


async def test_a_reader_too_slow_for_an_unpaced_server_gets_an_error_after_the_buffered_items() -> (
    None
):
    # memory:// only: with everything on one event loop, `wait_all_tasks_blocked` tells
    # when the client has buffered all it can.
    broker = Broker("memory")
    config = broker.config(rpc_stream_window=WINDOW)
    settings.use(config)
    async with (
        running(Unpaced, config=config) as runtime,
        farine.rpc.Client("unpaced", timeout=30) as rpc,
    ):
        instance = instance_of(runtime, "unpaced", Unpaced)
        got: list[int] = []

        async def read_on(stream: AsyncIterator[int]) -> None:
            async for item in stream:
                got.append(item)  # noqa: PERF401 - keep the items read before the error

        with anyio.fail_after(30):
            async with contextlib.aclosing(rpc.items(WINDOW * 3, __stream__=True)) as stream:
                got.append(await stream.__anext__())
                await instance.sent.wait_for(1)  # the server sent every item
                await anyio.wait_all_tasks_blocked()  # and the client took in what it could
                with pytest.raises(
                    RPCError, match=f"stream reader too slow: more than {WINDOW} items buffered"
                ):
                    await read_on(stream)
    # The first item, then a full buffer: the window, and one more (room for the end).
    assert got == list(range(WINDOW + 2))
