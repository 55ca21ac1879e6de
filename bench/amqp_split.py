"""Which side limits `amqp_throughput.py`: the publisher or the consumer (a script).

Runs the two halves of the throughput workload apart, on one backend and handler kind:

* publish only: N awaited, confirmed, persistent publishes through farine's
  `AsyncPublisher` inside a runtime, to a queue nobody consumes;
* consume only: the queue is filled first (raw aiormq), then a farine consumer with
  prefetch 256 drains it; the clock runs from the first message handled to the last ack.

    python bench/amqp_split.py [--messages 20000] [--only "trio, def"]

Each row also shows the process CPU time per message, less sensitive than the rate to
other load on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Literal

import aiormq
import anyio
import msgspec
from pamqp import commands as spec

import farine.amqp
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Callable

from amqp_throughput import PREFETCH, Reading, make_body

Kind = Literal["def", "async"]


def _service(name: str, count: int, kind: Kind, on_first: Callable[[], None]) -> type:
    done = threading.Event()
    lock = threading.Lock()
    received = 0

    def count_one() -> None:
        nonlocal received
        with lock:
            received += 1
            if received == 1:
                on_first()
            if received == count:
                done.set()

    class SyncBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=PREFETCH)
        def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            count_one()

    class AsyncBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=PREFETCH)
        async def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            count_one()

    bench = SyncBench if kind == "def" else AsyncBench
    bench.done = done  # type: ignore[attr-defined]
    return bench


async def _fill(uri: str, name: str, count: int) -> None:
    connection = await aiormq.connect(uri)
    channel = await connection.channel()
    await channel.exchange_declare(name, exchange_type="direct", durable=True)
    await channel.queue_declare(name, durable=True)
    await channel.queue_bind(name, name, routing_key="rk")
    properties = spec.Basic.Properties(content_type="application/json", delivery_mode=2)
    pending = [
        channel.basic_publish(make_body(i), exchange=name, routing_key="rk", properties=properties)
        for i in range(count)
    ]
    await asyncio.gather(*pending)
    await connection.close()


async def _remove(uri: str, *names: str) -> None:
    connection = await aiormq.connect(uri)
    channel = await connection.channel()
    for name in names:
        await channel.queue_delete(name)
        await channel.exchange_delete(name)
    await connection.close()


async def consume_only(uri: str, count: int, kind: Kind) -> tuple[float, float]:
    name = f"bench-split-{uuid.uuid4().hex[:8]}"
    await anyio.to_thread.run_sync(asyncio.run, _fill(uri, name, count))
    times: list[tuple[float, float]] = []

    def first() -> None:
        times.append((time.perf_counter(), time.process_time()))

    bench = _service(name, count, kind, first)
    wall = cpu = 0.0
    config = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\n")
    runtime = Runtime([ServiceDefinition(bench, "bench", find_entrypoints(bench))], config=config)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        await anyio.to_thread.run_sync(bench.done.wait)  # type: ignore[attr-defined]
        wall, cpu = time.perf_counter() - times[0][0], time.process_time() - times[0][1]
        runtime.stop()
    await anyio.to_thread.run_sync(asyncio.run, _remove(uri, name))
    return count / wall, cpu / count * 1e6


async def publish_only(uri: str, count: int, kind: Kind) -> tuple[float, float]:
    name = f"bench-split-{uuid.uuid4().hex[:8]}"
    sink = name + "-sink"
    # A consumer on another queue only to run a runtime that owns the connection.
    bench = _service(sink, 1, kind, lambda: None)
    config = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\n")
    runtime = Runtime([ServiceDefinition(bench, "bench", find_entrypoints(bench))], config=config)
    await anyio.to_thread.run_sync(asyncio.run, _fill(uri, name, 0))
    publish = farine.amqp.AsyncPublisher(name, "rk", settings=config.service("bench"))
    bodies = [Reading("thermometer-kitchen-01", 21.5, "celsius", i) for i in range(count)]
    wall = cpu = 0.0
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        start, cpu = time.perf_counter(), time.process_time()
        for body in bodies:
            await publish(body)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        runtime.stop()
    await anyio.to_thread.run_sync(asyncio.run, _remove(uri, name, sink))
    return count / wall, cpu / count * 1e6


async def raw(uri: str, count: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Raw aiormq, publish only then consume only: the baseline."""
    name = f"bench-split-{uuid.uuid4().hex[:8]}"
    await _fill(uri, name, 0)
    connection = await aiormq.connect(uri)
    channel = await connection.channel()
    properties = spec.Basic.Properties(content_type="application/json", delivery_mode=2)
    bodies = [make_body(i) for i in range(count)]
    start, cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        await channel.basic_publish(
            body, exchange=name, routing_key="rk", properties=properties, mandatory=True
        )
    pub = (count / (time.perf_counter() - start), (time.process_time() - cpu) / count * 1e6)
    consumer = await connection.channel(publisher_confirms=False)
    await consumer.basic_qos(prefetch_count=PREFETCH)
    done = asyncio.Event()
    decoder = msgspec.json.Decoder(Reading)
    received = 0
    marks: list[tuple[float, float]] = []

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        nonlocal received
        if not marks:
            marks.append((time.perf_counter(), time.process_time()))
        decoder.decode(message.body)
        await consumer.basic_ack(message.delivery.delivery_tag)  # type: ignore[union-attr]
        received += 1
        if received == count:
            done.set()

    await consumer.basic_consume(name, on_message)
    await done.wait()
    con = (
        count / (time.perf_counter() - marks[0][0]),
        (time.process_time() - marks[0][1]) / count * 1e6,
    )
    await connection.close()
    await _remove(uri, name)
    return pub, con


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--only", default="", help="run the rows whose names contain this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    count: int = args.messages
    uri: str = args.uri
    rows: dict[str, tuple[float, float]] = {}
    published: dict[str, tuple[float, float]] = {}
    if not args.only or "raw" in args.only:
        pub, con = asyncio.run(raw(uri, count))
        rows["raw aiormq"] = (pub[0], con[0])
        print(
            f"  {'raw aiormq':<20} publish only {pub[0]:>6.0f} msg/s {pub[1]:>5.0f} us cpu/msg"
            f"   consume only {con[0]:>6.0f} msg/s {con[1]:>5.0f} us cpu/msg",
            flush=True,
        )
    for backend in ("asyncio", "trio"):
        for kind in ("async", "def"):
            label = f"{backend}, {'async def' if kind == 'async' else 'def'}"
            if args.only and args.only not in label:
                continue
            # The publisher does not depend on the handler kind: measured once per backend.
            if backend not in published:
                published[backend] = anyio.run(publish_only, uri, count, kind, backend=backend)
            pub = published[backend]
            con = anyio.run(consume_only, uri, count, kind, backend=backend)
            rows[label] = (pub[0], con[0])
            print(
                f"  {label:<20} publish only {pub[0]:>6.0f} msg/s {pub[1]:>5.0f} us cpu/msg"
                f"   consume only {con[0]:>6.0f} msg/s {con[1]:>5.0f} us cpu/msg",
                flush=True,
            )
    print(json.dumps({k: {"publish": round(p), "consume": round(c)} for k, (p, c) in rows.items()}))


if __name__ == "__main__":
    main()
