"""Time to ready and memory with K consumers: raw aiormq against farine (a script, not a test).

Workload, for K = 1, 10 and 100 (`--consumers`): a service with K consumers, each on a
queue of its own bound to one durable direct exchange, prefetch 64, no message sent.

* farine: a service class with K `@farine.amqp.consume(...)` `async def` methods, run
  by `Runtime.run` started with `task_group.start`: it returns once every consumer is
  consuming. On asyncio and trio, on the fast path and on the stock path.
* raw aiormq (asyncio): one connection, then for each consumer, one after the other, a
  channel, `basic_qos`, the exchange, queue and binding declared (as farine declares
  them) and `basic_consume`.

Measured in each row's own process: the time from the start (before the connection) to
ready, and the memory growth: the process's resident set size once ready minus its
size just before the start (`/proc/self/statm`). Each row runs `--repeat` times (rows
in turn); the table shows medians, each ratio the median of the repeats' ratios to raw
aiormq with the same K, and the growth beyond one consumer (K's growth minus K=1's,
from the medians), with its ratio to raw aiormq's: what the consumers themselves cost,
without what the first connection loads once (farine's fast path imports its modules
then). The issue that set the target stated it that way ("35 MB more memory than one").

    python bench/consumers.py [--consumers 1,10,100] [--repeat 3] [--fast-path both]
        [--uri amqp://guest:guest@127.0.0.1:5672/]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
import anyio
from _paths import CHOICES, fast_path_enabled, median, paths, rss_mib, run_row

import farine.amqp
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Callable

PREFETCH = 64
RAW = "raw aiormq (asyncio)"


async def raw_aiormq(uri: str, k: int) -> tuple[float, float]:
    """K consumers opened on raw aiormq; return seconds to ready and MiB of RSS growth."""
    name = f"bench-consumers-raw-{uuid.uuid4().hex[:8]}"

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        await message.channel.basic_ack(message.delivery.delivery_tag)  # type: ignore[union-attr]

    before = rss_mib()
    start = time.perf_counter()
    connection = await aiormq.connect(uri)
    try:
        consumers: list[tuple[aiormq.abc.AbstractChannel, str]] = []
        for i in range(k):
            channel = await connection.channel()
            await channel.basic_qos(prefetch_count=PREFETCH)
            await channel.exchange_declare(name, exchange_type="direct", durable=True)
            await channel.queue_declare(f"{name}-{i}", durable=True)
            await channel.queue_bind(f"{name}-{i}", name, routing_key=f"rk{i}")
            ok = await channel.basic_consume(f"{name}-{i}", on_message)
            consumers.append((channel, str(ok.consumer_tag)))
        elapsed = time.perf_counter() - start
        growth = rss_mib() - before
        # Cancelled first: a queue deleted under its consumer makes aiormq warn.
        for channel, tag in consumers:
            await channel.basic_cancel(tag)
        await _remove(connection, name, k)
    finally:
        await connection.close()
    return elapsed, growth


def _service(name: str, k: int) -> type:
    """A service class with K consumers, each on its own queue."""
    methods: dict[str, Any] = {}
    for i in range(k):

        async def handle(self: object, body: bytes, message: farine.amqp.Message) -> None:
            pass

        handle.__name__ = handle.__qualname__ = f"handle_{i}"
        decorate = farine.amqp.consume(
            exchange=name, routing_key=f"rk{i}", queue=f"{name}-{i}", prefetch=PREFETCH
        )
        methods[f"handle_{i}"] = decorate(handle)
    return type("ConsumersBench", (), methods)


async def farine_run(uri: str, k: int) -> tuple[float, float]:
    """K consumers in one farine service; return seconds to ready and MiB of RSS growth."""
    name = f"bench-consumers-{uuid.uuid4().hex[:8]}"
    service = _service(name, k)
    config = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\n")
    definition = ServiceDefinition(service, "bench", find_entrypoints(service))
    elapsed = growth = 0.0
    before = rss_mib()
    start = time.perf_counter()
    runtime = Runtime([definition], config=config)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        elapsed = time.perf_counter() - start
        growth = rss_mib() - before
        runtime.stop()
    await anyio.to_thread.run_sync(asyncio.run, _cleanup(uri, name, k))
    return elapsed, growth


async def _remove(connection: aiormq.abc.AbstractConnection, name: str, k: int) -> None:
    channel = await connection.channel()
    for i in range(k):
        await channel.queue_delete(f"{name}-{i}")
    await channel.exchange_delete(name)


async def _cleanup(uri: str, name: str, k: int) -> None:
    connection = await aiormq.connect(uri)
    try:
        await _remove(connection, name, k)
    finally:
        await connection.close()


def _path_of(label: str) -> str | None:
    """The path a row's label names (None for raw aiormq)."""
    return None if "raw" in label else label.split()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--consumers", default="1,10,100", help="the values of K, by commas")
    parser.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every row; medians")
    parser.add_argument("--fast-path", choices=CHOICES, default=None, help="default: both")
    parser.add_argument("--row", default="", help=argparse.SUPPRESS)  # one row's process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uri: str = args.uri
    ks = [int(k) for k in str(args.consumers).split(",")]
    path_list = ["fast", "stock", "auto"] if args.row else paths(args.fast_path)
    rows: dict[str, Callable[[int], tuple[float, float]]] = {
        RAW: lambda k: asyncio.run(raw_aiormq(uri, k))
    }
    for backend in ("asyncio", "trio"):
        for path in path_list:
            rows[f"farine {backend} {path}"] = lambda k, b=backend: anyio.run(
                farine_run, uri, k, backend=b
            )
    if args.row:  # one row, in its own process, run by the coordinator below
        elapsed, growth = rows[args.row](ks[0])
        print(json.dumps({"ready_s": elapsed, "growth_mib": growth, "fast": fast_path_enabled()}))
        return
    repeat = max(1, args.repeat)
    samples: dict[tuple[int, str], list[dict[str, float]]] = {}
    for n in range(1, repeat + 1):
        for k in ks:
            got: dict[str, dict[str, Any]] = {}
            for label in rows:
                argv = ["--uri", uri, "--consumers", str(k)]
                one = got[label] = run_row(__file__, argv, label, _path_of(label))
                print(
                    f"  [{n}/{repeat}] K={k:<4} {label:<22} ready in {one['ready_s'] * 1000:8.1f}"
                    f" ms, RSS +{one['growth_mib']:6.2f} MiB",
                    flush=True,
                )
            for label, one in got.items():
                one["ready_x_raw"] = one["ready_s"] / got[RAW]["ready_s"]
                one["growth_x_raw"] = one["growth_mib"] / max(got[RAW]["growth_mib"], 1e-9)
                samples.setdefault((k, label), []).append(one)
    figures = {
        key: {name: median([s[name] for s in runs]) for name in runs[0] if name != "fast"}
        for key, runs in samples.items()
    }
    if 1 in ks:
        for (_, label), f in figures.items():
            f["beyond_mib"] = f["growth_mib"] - figures[(1, label)]["growth_mib"]
        for (k, _), f in figures.items():
            raw_beyond = figures[(k, RAW)]["beyond_mib"]
            f["beyond_x_raw"] = f["beyond_mib"] / raw_beyond if raw_beyond > 0 else math.nan
    print()
    print(f"median of {repeat} runs, prefetch {PREFETCH}, a queue per consumer")
    print(
        f"{'K':>4} {'workload':<22} {'ready ms':>9} {'x raw':>6} {'RSS growth MiB':>15}"
        f" {'x raw':>6} {'beyond K=1 MiB':>15} {'x raw':>6}"
    )
    for (k, label), f in figures.items():
        beyond, ratio = f.get("beyond_mib", math.nan), f.get("beyond_x_raw", math.nan)
        print(
            f"{k:>4} {label:<22} {f['ready_s'] * 1000:>9.1f} {f['ready_x_raw']:>6.2f}"
            f" {f['growth_mib']:>15.2f} {f['growth_x_raw']:>6.2f} {beyond:>15.2f} {ratio:>6.2f}"
        )
    print(
        json.dumps(
            {
                "prefetch": PREFETCH,
                "repeat": repeat,
                "median": {
                    f"K={k}: {label}": {name: round(v, 4) for name, v in f.items()}
                    for (k, label), f in figures.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
