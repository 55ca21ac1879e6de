"""AMQP throughput: raw aiormq against farine, on asyncio and trio (a script, not a test).

Workload, the same for every row: N persistent messages (100-byte JSON bodies decoded
into a msgspec Struct), published one after the other to a durable direct exchange,
each awaited until the broker confirms it, while a consumer with prefetch 256 acks each
message. The clock runs from the first publish to the last ack.

    python bench/amqp_throughput.py [--messages 20000] [--repeat 1]
        [--uri amqp://guest:guest@127.0.0.1:5672/]

It prints a table, then one JSON line with the msgs/s of each row, its ratio to raw
aiormq, and the process CPU time per message (all threads; less sensitive than the rate
to other load on the machine). `--repeat N` runs the rows N times, in turn, and keeps
the medians; raw aiormq always runs, as the reference.

Raw aiormq runs three times: with aiormq's defaults (the reference of the ratios);
with the socket read size farine sets (64 KiB instead of asyncio's 256 KiB), to show
how much of farine's figures that setting alone explains; and with each message decoded
in a worker thread (`loop.run_in_executor`), as a blocking handler must be. That last
row is the floor of a `def` handler: the JSON line also gives each farine `def` row
against it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import threading
import time
import uuid
from typing import TYPE_CHECKING, Literal

import aiormq
import anyio
import anyio.from_thread
import msgspec
from _raw import FARINE_READ_SIZE, connect_kwargs
from pamqp import commands as spec

import farine.amqp
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Callable

PREFETCH = 256


class Reading(msgspec.Struct):
    sensor: str
    value: float
    unit: str
    seq: int


def make_body(seq: int) -> bytes:
    body = msgspec.json.encode(Reading("thermometer-kitchen-01", 21.5, "celsius", seq))
    return body + b" " * max(0, 100 - len(body))  # 100 bytes, still valid JSON


async def raw_aiormq(
    uri: str, count: int, read_size: int | None = None, *, in_thread: bool = False
) -> tuple[float, float]:
    """Raw aiormq on asyncio: the baseline (with aiormq's defaults, unless `read_size`).

    With `in_thread`, each message is decoded in a worker thread of asyncio's default
    executor, as a blocking handler would be: the floor of what a `def` handler costs.
    """
    name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    decoder = msgspec.json.Decoder(Reading)
    connection = await aiormq.connect(uri, **connect_kwargs(read_size))
    try:
        publisher = await connection.channel()
        consumer = await connection.channel(publisher_confirms=False)
        await publisher.exchange_declare(name, exchange_type="direct", durable=True)
        await publisher.queue_declare(name, durable=True)
        await publisher.queue_bind(name, name, routing_key="rk")
        await consumer.basic_qos(prefetch_count=PREFETCH)
        done = asyncio.Event()
        received = 0
        loop = asyncio.get_running_loop()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal received
            if in_thread:
                await loop.run_in_executor(None, decoder.decode, message.body)
            else:
                decoder.decode(message.body)
            await consumer.basic_ack(message.delivery.delivery_tag)  # type: ignore[union-attr]
            received += 1
            if received == count:
                done.set()

        ok = await consumer.basic_consume(name, on_message)
        properties = spec.Basic.Properties(content_type="application/json", delivery_mode=2)
        bodies = [make_body(i) for i in range(count)]
        start, cpu = time.perf_counter(), time.process_time()
        for body in bodies:
            await publisher.basic_publish(
                body, exchange=name, routing_key="rk", properties=properties, mandatory=True
            )
        await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        await consumer.basic_cancel(ok.consumer_tag or "")
        await publisher.queue_delete(name)
        await publisher.exchange_delete(name)
        return count / elapsed, cpu / count * 1e6
    finally:
        await connection.close()


async def farine_run(uri: str, count: int, kind: Literal["def", "async"]) -> tuple[float, float]:
    """The same workload through farine: a consumer service and an AsyncPublisher."""
    name = f"bench-farine-{uuid.uuid4().hex[:8]}"
    done = anyio.Event()
    token = anyio.lowlevel.current_token()
    lock = threading.Lock()
    received = 0

    def count_one() -> None:
        nonlocal received
        with lock:
            received += 1
            last = received == count
        if last:
            anyio.from_thread.run_sync(done.set, token=token)

    class SyncBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=PREFETCH)
        def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            count_one()

    class AsyncBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=PREFETCH)
        async def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            nonlocal received
            received += 1
            if received == count:
                done.set()

    bench = SyncBench if kind == "def" else AsyncBench

    config = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\n")
    runtime = Runtime([ServiceDefinition(bench, "bench", find_entrypoints(bench))], config=config)
    publish = farine.amqp.AsyncPublisher(name, "rk", settings=config.service("syncbench"))
    bodies = [Reading("thermometer-kitchen-01", 21.5, "celsius", i) for i in range(count)]
    elapsed = cpu = 0.0
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        start, cpu = time.perf_counter(), time.process_time()
        for body in bodies:
            await publish(body)
        await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        runtime.stop()
    await _cleanup(uri, name)
    return count / elapsed, cpu / count * 1e6


async def _cleanup(uri: str, name: str) -> None:
    async def remove() -> None:
        connection = await aiormq.connect(uri)
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.exchange_delete(name)
        await connection.close()

    await anyio.to_thread.run_sync(asyncio.run, remove())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--only", default="", help="run the rows whose names contain this")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the rows this many times, in turn; keep medians"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    count: int = args.messages
    uri: str = args.uri
    samples: dict[str, list[tuple[float, float]]] = {}

    def farine(kind: Literal["def", "async"], backend: str) -> Callable[[], tuple[float, float]]:
        return lambda: anyio.run(farine_run, uri, count, kind, backend=backend)

    runs: list[tuple[str, Callable[[], tuple[float, float]]]] = [
        ("raw aiormq (asyncio)", lambda: asyncio.run(raw_aiormq(uri, count))),
        (
            "raw aiormq, 64 KiB reads",
            lambda: asyncio.run(raw_aiormq(uri, count, FARINE_READ_SIZE)),
        ),
        (
            "raw aiormq, handler in thread",
            lambda: asyncio.run(raw_aiormq(uri, count, in_thread=True)),
        ),
        ("farine asyncio, async def", farine("async", "asyncio")),
        ("farine asyncio, def", farine("def", "asyncio")),
        ("farine trio, async def", farine("async", "trio")),
        ("farine trio, def", farine("def", "trio")),
    ]
    only: str = args.only
    # Rows run in turn, not each N times in a row: load from elsewhere on the machine
    # then spreads over every row instead of skewing one.
    for _ in range(max(1, args.repeat)):
        for label, run in runs:
            if only and only not in label and "raw" not in label:
                continue
            rate, cpu = run()
            samples.setdefault(label, []).append((rate, cpu))
            print(f"  {label:<30} {rate:>9.0f} msg/s {cpu:>7.0f} us cpu/msg", flush=True)
    rows = {label: statistics.median(r for r, _ in runs) for label, runs in samples.items()}
    cpus = {label: statistics.median(c for _, c in runs) for label, runs in samples.items()}
    baseline = rows.get("raw aiormq (asyncio)")
    threaded = rows.get("raw aiormq, handler in thread")
    print()
    print(f"{'workload':<30} {'msg/s':>9} {'x raw':>7} {'cpu us/msg':>11}")
    for label, rate in rows.items():
        ratio = f"{rate / baseline:.2f}" if baseline else "-"
        print(f"{label:<30} {rate:>9.0f} {ratio:>7} {cpus[label]:>11.0f}")
    print(
        json.dumps(
            {
                "messages": count,
                "prefetch": PREFETCH,
                "repeat": max(1, args.repeat),
                "msgs_per_s": {k: round(v) for k, v in rows.items()},
                "ratio_to_raw_aiormq": {k: round(v / baseline, 3) for k, v in rows.items()}
                if baseline
                else {},
                "cpu_us_per_msg": {k: round(v) for k, v in cpus.items()},
                "def_ratio_to_raw_in_thread": {
                    k: round(v / threaded, 3) for k, v in rows.items() if k.endswith(", def")
                }
                if threaded
                else {},
            }
        )
    )


if __name__ == "__main__":
    main()
