"""AMQP throughput: raw aiormq against farine, on asyncio and trio (a script, not a test).

Workload, the same for every row: N persistent messages (100-byte JSON bodies decoded
into a msgspec Struct), published one after the other to a durable direct exchange,
each awaited until the broker confirms it, while a consumer with prefetch 256 acks each
message. The clock runs from the first publish to the last ack.

    python bench/amqp_throughput.py [--messages 20000] [--repeat 3] [--fast-path both]
        [--big-messages 200] [--only trio] [--uri amqp://guest:guest@127.0.0.1:5672/]

Each farine row runs on the fast path and on the stock path (aiormq's documented API
only): `--fast-path on|off|both` (default: `FARINE_AMQP_FAST_PATH` if set, else both).
Every row, raw or farine, runs in a process of its own, with the path set by that
process's `FARINE_AMQP_FAST_PATH`. `--repeat N` runs all rows N times, in turn; each
farine row's ratio to raw aiormq is taken within a repeat, and the tables show medians.

Raw aiormq runs three times: with aiormq's defaults (the reference of the ratios);
with the socket read size farine sets (64 KiB instead of asyncio's 256 KiB), to show
how much of farine's figures that setting alone explains; and with each message decoded
in a worker thread (`loop.run_in_executor`), as a blocking handler must be. That last
row is the floor of a `def` handler: the JSON line also gives each farine `def` row
against it.

The 1 MiB rows (`--big-messages`, 0 to skip) move `--big-messages` transient 1 MiB
bodies through a non-durable queue, 8 publishes in flight, consumed with prefetch 16 by
an `async def` handler taking the raw bytes: MiB/s, and the peak RSS of the row's
process (`getrusage`), against raw aiormq doing the same.

It prints each sample, the median tables, then one JSON line with every median.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

import aiormq
import anyio
import anyio.from_thread
import msgspec
from _paths import CHOICES, fast_path_enabled, max_rss_mib, median, paths, run_row
from _raw import FARINE_READ_SIZE, connect_kwargs
from pamqp import commands as spec

import farine.amqp
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

PREFETCH = 256
#: The 1 MiB rows: body size, consumer prefetch, publishes in flight.
BIG = 1024 * 1024
BIG_PREFETCH = 16
BIG_INFLIGHT = 8
RAW = "raw aiormq (asyncio)"
RAW_BIG = "1 MiB: raw aiormq (asyncio)"


class Reading(msgspec.Struct):
    sensor: str
    value: float
    unit: str
    seq: int


def make_body(seq: int) -> bytes:
    body = msgspec.json.encode(Reading("thermometer-kitchen-01", 21.5, "celsius", seq))
    return body + b" " * max(0, 100 - len(body))  # 100 bytes, still valid JSON


async def _publish_all(
    publish: Callable[[int], Awaitable[None]], count: int, inflight: int
) -> None:
    """Publish messages 0..count-1, `inflight` at a time, each awaited until confirmed."""
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < count:
            await publish(i)

    async with anyio.create_task_group() as tg:
        for _ in range(inflight):
            tg.start_soon(worker)


async def raw_aiormq(
    uri: str,
    count: int,
    read_size: int | None = None,
    *,
    in_thread: bool = False,
    big: bool = False,
) -> tuple[float, float]:
    """Raw aiormq on asyncio: the baseline (with aiormq's defaults, unless `read_size`).

    With `in_thread`, each message is decoded in a worker thread of asyncio's default
    executor, as a blocking handler would be: the floor of what a `def` handler costs.
    With `big`, the 1 MiB workload (transient, not decoded).
    """
    name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    decoder = msgspec.json.Decoder(Reading)
    connection = await aiormq.connect(uri, **connect_kwargs(read_size))
    try:
        publisher = await connection.channel()
        consumer = await connection.channel(publisher_confirms=False)
        await publisher.exchange_declare(name, exchange_type="direct", durable=not big)
        await publisher.queue_declare(name, durable=not big)
        await publisher.queue_bind(name, name, routing_key="rk")
        await consumer.basic_qos(prefetch_count=BIG_PREFETCH if big else PREFETCH)
        done = asyncio.Event()
        received = 0
        loop = asyncio.get_running_loop()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal received
            if in_thread:
                await loop.run_in_executor(None, decoder.decode, message.body)
            elif not big:
                decoder.decode(message.body)
            await consumer.basic_ack(message.delivery.delivery_tag)  # type: ignore[union-attr]
            received += 1
            if received == count:
                done.set()

        ok = await consumer.basic_consume(name, on_message)
        properties = spec.Basic.Properties(
            content_type="application/octet-stream" if big else "application/json",
            delivery_mode=1 if big else 2,
        )
        bodies = [b"x" * BIG] if big else [make_body(i) for i in range(count)]

        async def publish(i: int) -> None:
            await publisher.basic_publish(
                bodies[0 if big else i],
                exchange=name,
                routing_key="rk",
                properties=properties,
                mandatory=True,
            )

        start, cpu = time.perf_counter(), time.process_time()
        await _publish_all(publish, count, BIG_INFLIGHT if big else 1)
        await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        await consumer.basic_cancel(ok.consumer_tag or "")
        await publisher.queue_delete(name)
        await publisher.exchange_delete(name)
        return count / elapsed, cpu / count * 1e6
    finally:
        await connection.close()


async def farine_run(
    uri: str, count: int, kind: Literal["def", "async"], *, big: bool = False
) -> tuple[float, float]:
    """The same workload through farine: a consumer service and an AsyncPublisher."""
    name = f"bench-farine-{uuid.uuid4().hex[:8]}"
    done = anyio.Event()
    token = anyio.lowlevel.current_token()
    lock = threading.Lock()
    received = 0
    prefetch = BIG_PREFETCH if big else PREFETCH

    def count_one() -> None:
        nonlocal received
        with lock:
            received += 1
            last = received == count
        if last:
            anyio.from_thread.run_sync(done.set, token=token)

    class SyncBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=prefetch)
        def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            count_one()

    class AsyncBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=prefetch)
        async def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            nonlocal received
            received += 1
            if received == count:
                done.set()

    class BigBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=prefetch)
        async def handle(self, body: bytes, message: farine.amqp.Message) -> None:
            nonlocal received
            received += 1
            if received == count:
                done.set()

    bench = BigBench if big else SyncBench if kind == "def" else AsyncBench
    settings = "durable = false\ndelivery_mode = 1\n" if big else ""
    config = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\n{settings}")
    runtime = Runtime([ServiceDefinition(bench, "bench", find_entrypoints(bench))], config=config)
    publisher = farine.amqp.AsyncPublisher(name, "rk", settings=config.service("syncbench"))
    if big:
        bodies: list[Any] = [b"x" * BIG]
    else:
        bodies = [Reading("thermometer-kitchen-01", 21.5, "celsius", i) for i in range(count)]

    async def publish(i: int) -> None:
        await publisher(bodies[0 if big else i])

    elapsed = cpu = 0.0
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        start, cpu = time.perf_counter(), time.process_time()
        await _publish_all(publish, count, BIG_INFLIGHT if big else 1)
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


def _rows(uri: str, count: int, big: int, path_list: list[str]) -> dict[str, Callable[[], Any]]:
    """Every row: its label, and what runs it (in the row's own process)."""

    def farine(kind: Literal["def", "async"], backend: str, n: int = count, *, big: bool = False):
        return lambda: anyio.run(lambda: farine_run(uri, n, kind, big=big), backend=backend)

    rows: dict[str, Callable[[], Any]] = {
        RAW: lambda: asyncio.run(raw_aiormq(uri, count)),
        "raw aiormq, 64 KiB reads": lambda: asyncio.run(raw_aiormq(uri, count, FARINE_READ_SIZE)),
        "raw aiormq, handler in thread": lambda: asyncio.run(
            raw_aiormq(uri, count, in_thread=True)
        ),
    }
    for backend in ("asyncio", "trio"):
        for path in path_list:
            rows[f"farine {backend} {path}, async def"] = farine("async", backend)
            rows[f"farine {backend} {path}, def"] = farine("def", backend)
    if big:
        rows[RAW_BIG] = lambda: asyncio.run(raw_aiormq(uri, big, big=True))
        for backend in ("asyncio", "trio"):
            for path in path_list:
                rows[f"1 MiB: farine {backend} {path}"] = farine("async", backend, big, big=True)
    return rows


def _path_of(label: str) -> str | None:
    """The path a row's label names (None for raw aiormq)."""
    if "raw" in label:
        return None
    return label.split(",")[0].split()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--big-messages", type=int, default=200, help="1 MiB messages (0: none)")
    parser.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--only", default="", help="run the rows whose names contain this")
    parser.add_argument("--fast-path", choices=CHOICES, default=None, help="default: both")
    parser.add_argument(
        "--repeat", type=int, default=3, help="run all rows this many times, in turn; medians"
    )
    parser.add_argument("--row", default="", help=argparse.SUPPRESS)  # one row's process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    count: int = args.messages
    big: int = args.big_messages
    uri: str = args.uri
    path_list = paths(args.fast_path)
    rows = _rows(uri, count, big, ["fast", "stock", "auto"] if args.row else path_list)
    if args.row:  # one row, in its own process, run by the coordinator below
        rate, cpu = rows[args.row]()
        result = {"rate": rate, "cpu": cpu, "rss_mib": max_rss_mib(), "fast": fast_path_enabled()}
        print(json.dumps(result), flush=True)
        return
    only: str = args.only
    labels = [k for k in rows if not only or only in k or k in (RAW, RAW_BIG)]
    argv = ["--uri", uri, "--messages", str(count), "--big-messages", str(big)]
    repeat = max(1, args.repeat)
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    # Rows run in turn, not each N times in a row: load from elsewhere on the machine
    # then spreads over every row instead of skewing one.
    for n in range(1, repeat + 1):
        got: dict[str, dict[str, Any]] = {}
        for label in labels:
            got[label] = run_row(__file__, argv, label, _path_of(label))
            one = got[label]
            unit = "MiB/s" if label.startswith("1 MiB") else "msg/s"
            print(
                f"  [{n}/{repeat}] {label:<32} {one['rate']:>9.1f} {unit} "
                f"{one['cpu']:>7.0f} us cpu/msg {one['rss_mib']:>6.1f} MiB peak RSS",
                flush=True,
            )
        for label, one in got.items():
            ref = got.get(RAW_BIG if label.startswith("1 MiB") else RAW)
            one["x_raw"] = one["rate"] / ref["rate"] if ref else float("nan")
            one["rss_x_raw"] = one["rss_mib"] / ref["rss_mib"] if ref else float("nan")
            samples[label].append(one)
    figures = {
        label: {key: median([s[key] for s in runs]) for key in runs[0] if key != "fast"}
        for label, runs in samples.items()
        if runs
    }
    print()
    print(f"median of {repeat} runs, {count} messages of 100 bytes")
    print(f"{'workload':<32} {'msg/s':>9} {'x raw':>7} {'cpu us/msg':>11}")
    for label, f in figures.items():
        if not label.startswith("1 MiB"):
            print(f"{label:<32} {f['rate']:>9.0f} {f['x_raw']:>7.2f} {f['cpu']:>11.0f}")
    if big:
        print()
        print(f"median of {repeat} runs, {big} messages of 1 MiB")
        print(
            f"{'workload':<32} {'MiB/s':>8} {'x raw':>7} {'peak RSS MiB':>13} {'RSS x raw':>10}"
            f" {'cpu us/msg':>11}"
        )
        for label, f in figures.items():
            if label.startswith("1 MiB"):
                print(
                    f"{label:<32} {f['rate']:>8.1f} {f['x_raw']:>7.2f} {f['rss_mib']:>13.1f}"
                    f" {f['rss_x_raw']:>10.2f} {f['cpu']:>11.0f}"
                )
    threaded = figures.get("raw aiormq, handler in thread")
    print(
        json.dumps(
            {
                "messages": count,
                "big_messages": big,
                "prefetch": PREFETCH,
                "repeat": repeat,
                "median": {k: {n: round(v, 3) for n, v in f.items()} for k, f in figures.items()},
                "def_ratio_to_raw_in_thread": {
                    k: round(f["rate"] / threaded["rate"], 3)
                    for k, f in figures.items()
                    if k.endswith(", def")
                }
                if threaded
                else {},
            }
        )
    )


if __name__ == "__main__":
    main()
