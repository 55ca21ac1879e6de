"""Streaming RPC: a `feed` of items and a `watcher` reading it (docs/rpc-streaming.md).

Run it from `docs/examples` with `farine start rpc_feed` (memory://: one process).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
import msgspec

import farine.execute
import farine.rpc
from farine.exceptions import RPCError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

logger = logging.getLogger(__name__)


class Tick(msgspec.Struct):
    n: int
    at: datetime


class Feed:
    @farine.rpc.method()
    def countdown(self, start: int) -> Iterator[int]:
        # A generator: each item is computed in a worker thread, sent as it comes.
        yield from range(start, 0, -1)

    @farine.rpc.method()
    async def ticks(self, every: float) -> AsyncIterator[Tick]:
        n = 0
        try:
            while True:  # endless: the caller decides when to stop
                n += 1
                yield Tick(n, datetime.now(UTC))
                await anyio.sleep(every)
        finally:
            logger.info("ticks: stopped after %d", n)

    @farine.rpc.method()
    def flaky(self) -> Iterator[str]:
        yield "first reading"
        raise RuntimeError("sensor unplugged")


class Watcher:
    @farine.execute.method(restart=False)
    @farine.rpc.client("feed")
    def count(self, rpc: farine.rpc.Client) -> None:
        for n in rpc.countdown(3, __stream__=True):
            logger.info("countdown: %d", n)

    @farine.execute.method(restart=False)
    @farine.rpc.client("feed", timeout=10)
    async def watch(self, rpc: farine.rpc.AsyncClient) -> None:
        # aclosing: leaving the loop closes the stream at once, which stops the server.
        async with contextlib.aclosing(rpc.ticks(0.01, __stream__=True)) as ticks:
            async for item in ticks:
                tick = msgspec.convert(item, Tick)  # items arrive as JSON values
                logger.info("tick %d", tick.n)
                if tick.n == 3:
                    break
        try:
            async for reading in rpc.flaky(__stream__=True):
                logger.info("flaky: %s", reading)
        except RPCError as exc:
            logger.info("flaky: failed with %s: %s", exc.remote_type, exc.remote_message)
