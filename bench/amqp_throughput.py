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
process's `FARINE_AMQP_FAST_PATH` (raw aiormq's with the fast path off, so that nothing
of farine replaces aiormq's globals under it). All rows are set up and warmed up at
once, then take turns, 1000 messages (twenty 1 MiB ones) each, so that load from
elsewhere on the machine weighs on every row alike. `--repeat N` runs the whole N
times; each row's ratio to raw aiormq is taken within a run, and the tables show the
medians over the runs.

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

The rows marked `--http` run with the operations endpoint on, so that each message is
timed and counted (`farine_handler_seconds`, `farine_messages_total`, ...): against
the same row without it, the cost of the metrics.

It prints each sample, the median tables, then one JSON line with every median.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

import aiormq
import anyio
import anyio.from_thread
import msgspec
from _paths import CHOICES, RowProcess, fast_path_enabled, max_rss_mib, median, paths
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
#: Messages a row handles in its turn (100-byte, 1 MiB), and before it is measured.
BATCH = 1000
BIG_BATCH = 20
WARMUP = 500
BIG_WARMUP = 8
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


class Tally:
    """Counts handled messages; `wait(n)` returns once `n` more were handled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.target = 0
        self.done = anyio.Event()
        self.token = anyio.lowlevel.current_token()

    def hit(self) -> None:
        """One message handled (on the event loop)."""
        self.received += 1
        if self.received == self.target:
            self.done.set()

    def hit_from_thread(self) -> None:
        """One message handled (in a worker thread)."""
        with self.lock:
            self.received += 1
            last = self.received == self.target
        if last:
            anyio.from_thread.run_sync(self.done.set, token=self.token)

    def expect(self, count: int) -> anyio.Event:
        with self.lock:
            self.done = anyio.Event()
            self.target = self.received + count
        return self.done


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


async def _serve(
    publish: Callable[[int], Awaitable[None]], tally: Tally, *, big: bool, warmup: int
) -> None:
    """Warm up, then answer the coordinator's commands until `stop`: `["run", n]`
    publishes n messages and waits until they are handled; answers elapsed and CPU."""
    inflight = BIG_INFLIGHT if big else 1

    async def run(count: int) -> None:
        done = tally.expect(count)
        await _publish_all(publish, count, inflight)
        await done.wait()

    await run(warmup)
    print(json.dumps({"ready": fast_path_enabled()}), flush=True)
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        command, count = json.loads(line or '["stop", 0]')
        if command == "stop":
            return
        start, cpu = time.perf_counter(), time.process_time()
        await run(count)
        print(json.dumps([time.perf_counter() - start, time.process_time() - cpu]), flush=True)


async def raw_aiormq(
    uri: str,
    read_size: int | None = None,
    *,
    in_thread: bool = False,
    big: bool = False,
    warmup: int = 0,
) -> None:
    """Raw aiormq on asyncio: the baseline (with aiormq's defaults, unless `read_size`).

    With `in_thread`, each message is decoded in a worker thread of asyncio's default
    executor, as a blocking handler would be: the floor of what a `def` handler costs.
    With `big`, the 1 MiB workload (transient, not decoded).
    """
    name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    decoder = msgspec.json.Decoder(Reading)
    tally = Tally()
    connection = await aiormq.connect(uri, **connect_kwargs(read_size))
    try:
        publisher = await connection.channel()
        consumer = await connection.channel(publisher_confirms=False)
        await publisher.exchange_declare(name, exchange_type="direct", durable=not big)
        await publisher.queue_declare(name, durable=not big)
        await publisher.queue_bind(name, name, routing_key="rk")
        await consumer.basic_qos(prefetch_count=BIG_PREFETCH if big else PREFETCH)
        loop = asyncio.get_running_loop()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            if in_thread:
                await loop.run_in_executor(None, decoder.decode, message.body)
            elif not big:
                decoder.decode(message.body)
            await consumer.basic_ack(message.delivery.delivery_tag)  # type: ignore[union-attr]
            tally.hit()

        ok = await consumer.basic_consume(name, on_message)
        properties = spec.Basic.Properties(
            content_type="application/octet-stream" if big else "application/json",
            delivery_mode=1 if big else 2,
        )
        big_body = b"x" * BIG

        async def publish(i: int) -> None:
            await publisher.basic_publish(
                big_body if big else make_body(i),
                exchange=name,
                routing_key="rk",
                properties=properties,
                mandatory=True,
            )

        await _serve(publish, tally, big=big, warmup=warmup)
        await consumer.basic_cancel(ok.consumer_tag or "")
        await publisher.queue_delete(name)
        await publisher.exchange_delete(name)
    finally:
        await connection.close()


async def farine_run(
    uri: str,
    kind: Literal["def", "async", "guarded"],
    *,
    big: bool,
    warmup: int,
    http: bool = False,
) -> None:
    """The same workload through farine: a consumer service and an AsyncPublisher
    (`http`: with the operations endpoint on, so every metric is recorded)."""
    name = f"bench-farine-{uuid.uuid4().hex[:8]}"
    tally = Tally()
    prefetch = BIG_PREFETCH if big else PREFETCH

    class SyncBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=prefetch)
        def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            tally.hit_from_thread()

    class AsyncBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=prefetch)
        async def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            tally.hit()

    class GuardedBench:
        # The delivery guarantees declared: nothing of them runs while nothing fails.
        @farine.amqp.consume(
            exchange=name,
            routing_key="rk",
            queue=name,
            prefetch=prefetch,
            retry=farine.amqp.Retry(attempts=5),
            dead_letter=f"{name}.failed",
        )
        async def handle(self, body: Reading, message: farine.amqp.Message) -> None:
            tally.hit()

    class BigBench:
        @farine.amqp.consume(exchange=name, routing_key="rk", queue=name, prefetch=prefetch)
        async def handle(self, body: bytes, message: farine.amqp.Message) -> None:
            tally.hit()

    benches = {"def": SyncBench, "async": AsyncBench, "guarded": GuardedBench}
    bench = BigBench if big else benches[kind]
    settings = "durable = false\ndelivery_mode = 1\n" if big else ""
    if http:
        settings += "http = 127.0.0.1:0\n"
    config = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\n{settings}")
    runtime = Runtime([ServiceDefinition(bench, "bench", find_entrypoints(bench))], config=config)
    publisher = farine.amqp.AsyncPublisher(name, "rk", settings=config.service("syncbench"))
    big_body = b"x" * BIG

    async def publish(i: int) -> None:
        await publisher(big_body if big else Reading("thermometer-kitchen-01", 21.5, "celsius", i))

    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        await _serve(publish, tally, big=big, warmup=warmup)
        runtime.stop()
    await _cleanup(uri, name)


async def _cleanup(uri: str, name: str) -> None:
    async def remove() -> None:
        connection = await aiormq.connect(uri)
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.exchange_delete(name)
        # What the row with dead_letter= declares.
        await channel.queue_delete(f"{name}.dead")
        await channel.exchange_delete(f"{name}.failed")
        await connection.close()

    await anyio.to_thread.run_sync(asyncio.run, remove())


def _rows(uri: str, path_list: list[str], *, big: bool) -> dict[str, Callable[[], None]]:
    """Every row: its label, and what runs it (in the row's own process)."""
    small, large = WARMUP, BIG_WARMUP

    def farine(
        kind: Literal["def", "async", "guarded"],
        backend: str,
        *,
        big: bool = False,
        http: bool = False,
    ):
        def run() -> None:
            warmup = large if big else small
            anyio.run(
                lambda: farine_run(uri, kind, big=big, warmup=warmup, http=http), backend=backend
            )

        return run

    rows: dict[str, Callable[[], None]] = {
        RAW: lambda: asyncio.run(raw_aiormq(uri, warmup=small)),
        "raw aiormq, 64 KiB reads": lambda: asyncio.run(
            raw_aiormq(uri, FARINE_READ_SIZE, warmup=small)
        ),
        "raw aiormq, handler in thread": lambda: asyncio.run(
            raw_aiormq(uri, in_thread=True, warmup=small)
        ),
    }
    if uri.startswith("amqps:"):  # aiormq opens TLS itself: no read size of farine's
        del rows["raw aiormq, 64 KiB reads"]
    for backend in ("asyncio", "trio"):
        for path in path_list:
            rows[f"farine {backend} {path}, async def"] = farine("async", backend)
            rows[f"farine {backend} {path}, def"] = farine("def", backend)
            rows[f"farine {backend} {path}, async def, retry= dead_letter="] = farine(
                "guarded", backend
            )
            # The same with the operations endpoint on (`--http`): every metric recorded.
            rows[f"farine {backend} {path}, async def, --http"] = farine(
                "async", backend, http=True
            )
    if big:
        rows[RAW_BIG] = lambda: asyncio.run(raw_aiormq(uri, big=True, warmup=large))
        for backend in ("asyncio", "trio"):
            for path in path_list:
                rows[f"1 MiB: farine {backend} {path}"] = farine("async", backend, big=True)
    return rows


def path_of(label: str) -> str | None:
    """The path a row's label names (None for raw aiormq)."""
    if "raw" in label:
        return None
    return label.split(",")[0].split()[-1]


def _take_turns(active: list[RowProcess], total: int, batch: int, turn: int) -> dict[str, Any]:
    """Each row handles `total` messages, `batch` in its turn; returns each row's
    messages per second and CPU microseconds per message (and the next turn)."""
    elapsed = dict.fromkeys([row.label for row in active], 0.0)
    cpu = dict(elapsed)
    batches = max(1, total // batch)
    for _ in range(batches):
        for row in active[turn % len(active) :] + active[: turn % len(active)]:
            seconds, cpu_seconds = row.ask(["run", total // batches])
            elapsed[row.label] += seconds
            cpu[row.label] += cpu_seconds
        turn += 1
    done = batches * (total // batches)
    return {
        "turn": turn,
        "rows": {k: {"rate": done / v, "cpu": cpu[k] / done * 1e6} for k, v in elapsed.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--big-messages", type=int, default=200, help="1 MiB messages (0: none)")
    parser.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--only", default="", help="run the rows whose names contain this")
    parser.add_argument("--fast-path", choices=CHOICES, default=None, help="default: both")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the whole; medians")
    parser.add_argument("--row", default="", help=argparse.SUPPRESS)  # one row's process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    count: int = args.messages
    big: int = args.big_messages
    uri: str = args.uri
    path_list = ["fast", "stock", "auto"] if args.row else paths(args.fast_path)
    rows = _rows(uri, path_list, big=big > 0)
    if args.row:  # one row, in its own process, run by the coordinator below
        rows[args.row]()
        print(json.dumps({"rss_mib": max_rss_mib()}), flush=True)
        return
    only: str = args.only
    labels = [k for k in rows if not only or only in k or k in (RAW, RAW_BIG)]
    repeat = max(1, args.repeat)
    # Every row in a process of its own, all set up at once; then they take turns, a
    # batch each, so that load from elsewhere on the machine weighs on every row alike.
    small = [RowProcess(__file__, ["--uri", uri], k, path_of(k)) for k in labels if "MiB" not in k]
    large = [RowProcess(__file__, ["--uri", uri], k, path_of(k)) for k in labels if "MiB" in k]
    for row in small + large:
        row.check_ready()
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    turn = 0
    for n in range(1, repeat + 1):
        got: dict[str, dict[str, float]] = {}
        for active, total, batch in ((small, count, BATCH), (large, big, BIG_BATCH)):
            if active and total:
                result = _take_turns(active, total, batch, turn)
                turn = result["turn"]
                got.update(result["rows"])
        for label, one in got.items():
            ref = got[RAW_BIG if label.startswith("1 MiB") else RAW]
            one["x_raw"] = one["rate"] / ref["rate"]
            samples[label].append(one)
            unit = "MiB/s" if label.startswith("1 MiB") else "msg/s"
            print(
                f"  [{n}/{repeat}] {label:<32} {one['rate']:>9.1f} {unit} {one['x_raw']:>5.2f}x raw"
                f" {one['cpu']:>7.0f} us cpu/msg",
                flush=True,
            )
    rss: dict[str, float] = {}
    for row in small + large:
        rss[row.label] = row.ask(["stop", 0])["rss_mib"]
        if row.process.wait() != 0:
            raise RuntimeError(f"row {row.label!r} failed while stopping")
    figures = {
        label: {key: median([s[key] for s in runs]) for key in runs[0]}
        for label, runs in samples.items()
        if runs
    }
    for label, f in figures.items():
        f["rss_mib"] = rss[label]
        f["rss_x_raw"] = rss[label] / rss[RAW_BIG if label.startswith("1 MiB") else RAW]
    print()
    print(f"median of {repeat} runs, {count} messages of 100 bytes per row and run")
    print(f"{'workload':<32} {'msg/s':>9} {'x raw':>7} {'cpu us/msg':>11}")
    for label, f in figures.items():
        if not label.startswith("1 MiB"):
            print(f"{label:<32} {f['rate']:>9.0f} {f['x_raw']:>7.2f} {f['cpu']:>11.0f}")
    if big:
        print()
        print(f"median of {repeat} runs, {big} messages of 1 MiB per row and run")
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
