"""FastStream's rows of `bench/peers.py`, run in FastStream's own virtualenv (not a test).

    python faststream_row.py consume URI QUEUE   # drain QUEUE on command
    python faststream_row.py rpc URI             # an `add` subscriber and its requests

It speaks `bench/peers.py`'s protocol: one JSON line `{"ready": false}` once set up,
then one JSON line per command read on stdin (see `bench/peers.py`).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from faststream.rabbit import Channel, RabbitBroker, RabbitExchange, RabbitQueue
from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

PREFETCH = 256
RPC_PREFETCH = 64
WARMUP = 200


class Reading(BaseModel):
    sensor: str
    value: float
    unit: str
    seq: int


class Add(BaseModel):
    a: int
    b: int


def answer(result: object) -> None:
    print(json.dumps(result), flush=True)


async def command() -> list[Any]:
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    return json.loads(line or '["stop", 0, 0]')


async def consume(uri: str, queue: str) -> None:
    """Drain `queue` (filled by the coordinator) `n` messages at a time, on command."""
    # logger=None: no log line per message, as farine and raw aiormq write none.
    broker = RabbitBroker(uri, logger=None)
    handled = 0
    target = 0
    first = (0.0, 0.0)
    last = (0.0, 0.0)
    done = anyio.Event()
    subscriber = broker.subscriber(
        RabbitQueue(queue, durable=True, routing_key="rk"),
        RabbitExchange(queue, durable=True),
        channel=Channel(prefetch_count=PREFETCH),
    )

    @subscriber
    async def handle(body: Reading) -> None:
        nonlocal handled, first, last
        handled += 1
        if handled == 1:
            first = (time.perf_counter(), time.process_time())
        if handled == target:
            last = (time.perf_counter(), time.process_time())
            done.set()

    async with broker:
        await broker.start()
        await subscriber.stop()
        answer({"ready": False})
        while True:
            name, count, *_ = await command()
            if name == "stop":
                return
            handled, target, done = 0, count, anyio.Event()
            await subscriber.start()
            await done.wait()
            await subscriber.stop()
            answer([last[0] - first[0], last[1] - first[1], count - 1])


async def rpc(uri: str) -> None:
    """`add(a, b)` served by a subscriber, called with `broker.request` (direct reply-to)."""
    broker = RabbitBroker(uri, logger=None)
    queue = f"bench-peers-faststream-{uuid.uuid4().hex[:8]}"

    @broker.subscriber(
        RabbitQueue(queue, auto_delete=True), channel=Channel(prefetch_count=RPC_PREFETCH)
    )
    async def add(a: int, b: int) -> int:
        return a + b

    async def call(a: int) -> int:
        reply = await broker.request({"a": a, "b": 1}, queue)
        return int(await reply.decode())  # type: ignore[arg-type]

    async with broker:
        await broker.start()
        for i in range(WARMUP):
            assert await call(i) == i + 1
        answer({"ready": False})
        while True:
            name, count, inflight = await command()
            if name == "stop":
                return
            if name == "seq":
                latencies: list[float] = []
                for i in range(count):
                    start = time.perf_counter()
                    assert await call(i) == i + 1
                    latencies.append(time.perf_counter() - start)
                answer(latencies)
                continue
            start, cpu = time.perf_counter(), time.process_time()
            async with anyio.create_task_group() as tg:
                counter = itertools.count()
                for _ in range(inflight):
                    tg.start_soon(calls, call, counter, count)
            answer([time.perf_counter() - start, time.process_time() - cpu])


async def calls(call: Callable[[int], Awaitable[int]], counter: Iterator[int], count: int) -> None:
    """Call while `counter` gives numbers below `count` (one of the calls in flight)."""
    while (i := next(counter)) < count:
        assert await call(i) == i + 1


def main() -> None:
    workload, uri, *rest = sys.argv[1:]
    if workload == "consume":
        anyio.run(consume, uri, rest[0])
    else:
        anyio.run(rpc, uri)


if __name__ == "__main__":
    main()
