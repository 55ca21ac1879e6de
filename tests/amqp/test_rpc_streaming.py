"""The bounded reply buffer of an RPC stream (docs/rpc-streaming.md, "Deadline and buffer")."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import pytest

import farine.rpc
from farine import settings
from farine.exceptions import RPCError
from farine.rpc._client import STREAM_BUFFER
from tests.amqp.conftest import Broker, Recorder, running

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

pytestmark = pytest.mark.anyio


class Firehose:
    def __init__(self) -> None:
        self.finished = Recorder()

    @farine.rpc.method()
    async def items(self, n: int) -> AsyncGenerator[int]:
        for i in range(n):
            yield i
        self.finished.add(n)


async def test_reader_more_than_256_items_behind_gets_an_error_after_the_buffered_ones() -> None:
    # memory:// only: with everything on one event loop, `wait_all_tasks_blocked` tells
    # when the server has sent all it will and the client has buffered all it can.
    broker = Broker("memory")
    config = broker.config()
    settings.use(config)
    assert STREAM_BUFFER == 256
    async with (
        running(Firehose, config=config) as runtime,
        farine.rpc.Client("firehose", timeout=30) as rpc,
    ):
        instance = runtime.services["firehose"].instance
        assert isinstance(instance, Firehose)
        got: list[int] = []

        async def read_on(stream: AsyncIterator[int]) -> None:
            async for item in stream:
                got.append(item)  # noqa: PERF401 - keep the items read before the error

        with anyio.fail_after(30):
            async with contextlib.aclosing(rpc.items(STREAM_BUFFER * 2, __stream__=True)) as stream:
                got.append(await stream.__anext__())
                await instance.finished.wait_for(1)  # the server sent all 512 items
                await anyio.wait_all_tasks_blocked()  # and the client took in what it could
                with pytest.raises(RPCError, match="stream reader too slow: more than 256 items"):
                    await read_on(stream)
            assert [i async for i in rpc.items(3, __stream__=True)] == [0, 1, 2]  # still serving
    assert got == list(range(STREAM_BUFFER + 1))  # the first item, then the buffered ones
