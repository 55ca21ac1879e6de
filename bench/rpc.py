"""RPC latency and throughput: raw aiormq against farine, on asyncio and trio (not a test).

Workload, the same for every row: a server method `add(a: int, b: int) -> int` and a
client in the same process, against the local RabbitMQ.

* latency: `--calls` calls one after the other (default 2000); p50 and p99 of each
  call's round trip;
* throughput: `--concurrent` calls (default 20000) made by `--inflight` tasks (default
  64) that each call again as soon as their answer arrives; calls per second, and the
  CPU time this process (client and server, all threads) spent per call meanwhile:
  a figure less sensitive than wall-clock ones to other load on the machine.

Rows:

* raw aiormq (asyncio): a minimal RPC written directly on aiormq, the baseline. The
  client publishes `{"args": [a, b], "kwargs": {}}` with `reply_to` set to RabbitMQ's
  direct reply-to (`amq.rabbitmq.reply-to`, consumed no-ack on the publishing channel)
  and a correlation id, and waits for the reply matched by that id. The server consumes
  with prefetch 64, publishes the reply and then acks the request. Both channels use
  publisher confirms (aiormq's default), as farine does.
* raw aiormq, 64 KiB reads: the same, reading the socket 64 KiB at a time as farine
  does (asyncio reads 256 KiB by default), to show how much of farine's figures that
  setting alone explains. The ratios are to the first row.
* raw aiormq, method in thread: the same, with the server's decoding and answer run in
  a worker thread (`loop.run_in_executor`), as a blocking method must be: the floor of
  a `def` method. The JSON line also gives each farine `def` row against it.
* farine, on asyncio and on trio, with an `async def` and a `def` server method
  (`@farine.rpc.method()`), on the fast path and on the stock path (aiormq's documented
  API only); the client is `farine.rpc.AsyncClient` on the runtime's loop (what
  `@farine.rpc.client` injects into `async def` methods).
* farine ..., async def, typed: the `async def` row with a typed client,
  `farine.rpc.AsyncClient[CalcAPI]`, which decodes each reply into the annotation
  (`int`): the cost of typing, to compare with the untyped row beside it.

    python bench/rpc.py [--calls 2000] [--concurrent 20000] [--inflight 64] [--rounds 2]
                        [--repeat 3] [--fast-path on|off|both] [--only trio]

Whether a change moved these figures: `--tree NAME=PATH` (repeatable) runs the farine
rows of each farine checkout given (a worktree of the commit before the change, and
this one), each with that tree's own `bench/rpc.py` and the tree first on `PYTHONPATH`,
shown as `NAME: row`, beside one set of raw aiormq rows, all taking turns:

    git worktree add /tmp/before HEAD~1
    python bench/rpc.py --tree before=/tmp/before --tree after=. --fast-path on --only trio

`--fast-path` chooses the farine rows' paths (default: `FARINE_AMQP_FAST_PATH` if set,
else both); a row's path is set by its process's `FARINE_AMQP_FAST_PATH`, and raw
aiormq's processes have the fast path off, so that nothing of farine replaces aiormq's
globals under them.

Each row runs in a process of its own (a farine runtime per process), all set up and
warmed up at once; then they take turns: each makes 100 sequential calls in its turn,
then 2500 concurrent ones, and the next row takes over. This VM's speed drifts by a
third within a minute (the CPU time of the same calls too), so rows measured one after
the other, a minute each, differed by as much; taking turns spreads the drift over
every row alike. Within a repeat, `--rounds` rounds run and every sample counts: p50
and p99 are over all sequential calls of the row, calls/s and CPU/call over all its
concurrent ones. `--repeat` runs the whole N times (the same processes); the table
shows the median of each figure and the median of each repeat's ratio to raw aiormq.
It prints the figures so far after each round, the table, then (last line) one JSON
object with every median.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiormq
import aiormq.abc
import anyio
import msgspec
from _paths import CHOICES, RowProcess, fast_path_enabled, median, paths, tree_arg
from _raw import FARINE_READ_SIZE, connect_kwargs
from pamqp import commands as spec

import farine.rpc
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

PREFETCH = 64
WARMUP = 200
#: Sequential calls a row makes in its turn.
BATCH = 100
#: Calls a row makes `--inflight` at a time in its turn.
CHUNK = 2500
REPLY_TO = "amq.rabbitmq.reply-to"


@dataclass
class Figures:
    p50_ms: float
    p99_ms: float
    calls_per_s: float
    cpu_us_per_call: float


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _Pipe:
    """A row's end of the coordinator's pipes: commands on stdin, results on stdout."""

    def __init__(self) -> None:
        self.commands = self
        self.results = self

    def get(self) -> tuple[str, int, int]:
        command, count, inflight = json.loads(sys.stdin.readline() or '["stop", 0, 0]')
        return command, count, inflight

    def put(self, result: object) -> None:
        print(json.dumps(result), flush=True)


class Row:
    """One workload, run in a process of its own (`--row`), measured a batch at a time.

    The coordinator (`main()`) sends it commands and reads its answers. Rows take
    turns, a batch each, so that the speed of this VM, which drifts by a third within a
    minute, weighs on every row alike. A row of another farine tree (`--tree`) runs
    that tree's own script with the tree first on `PYTHONPATH`, and is shown as
    `NAME: label`.
    """

    def __init__(
        self, label: str, argv: list[str], path: str | None, tree: tuple[str, Path] | None = None
    ) -> None:
        self.label = label if tree is None else f"{tree[0]}: {label}"
        self.path = path
        # The row's path is its process's FARINE_AMQP_FAST_PATH (off for raw aiormq,
        # whose process then never loads the fast path's replacements of aiormq's globals).
        script = __file__ if tree is None else str(tree[1] / "bench" / "rpc.py")
        pythonpath = None if tree is None else str(tree[1])
        self.process = RowProcess(
            script, argv, label, path, pythonpath=pythonpath, shown=self.label
        )
        self.reset()

    def reset(self) -> None:
        """Forget the samples so far (a new repeat starts)."""
        self.latencies: list[float] = []
        self.calls = 0
        self.elapsed = 0.0
        self.cpu = 0.0

    def ask(self, command: str, count: int = 0, inflight: int = 0) -> Any:
        if command == "stop":
            self.process.send([command, count, inflight])
            return None
        return self.process.ask([command, count, inflight])

    def figures(self) -> Figures:
        return Figures(
            p50_ms=statistics.median(self.latencies) * 1000,
            p99_ms=_percentile(self.latencies, 0.99) * 1000,
            calls_per_s=self.calls / self.elapsed,
            cpu_us_per_call=self.cpu / self.calls * 1e6,
        )


async def _concurrently(
    call: Callable[[int], Awaitable[int]],
    sleep0: Callable[[], Awaitable[None]],
    count: int,
    inflight: int,
) -> tuple[float, float]:
    """Make `count` calls, `inflight` at a time; return the elapsed and CPU seconds."""
    counter = itertools.count()
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            i = next(counter)
            if i >= count:
                return
            result = await call(i)
            assert result == i + 1, result
            done += 1

    await sleep0()
    start = time.perf_counter()
    cpu = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(inflight):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    assert done == count
    return elapsed, cpu


async def _serve_row(
    call: Callable[[int], Awaitable[int]], sleep0: Callable[[], Awaitable[None]], row: _Pipe
) -> None:
    """Warm up, then run the coordinator's commands: `seq` (calls one after the other:
    their latencies) and `conc` (calls by `inflight` tasks: elapsed and CPU time)."""
    for i in range(WARMUP):
        assert await call(i) == i + 1
    row.results.put({"ready": fast_path_enabled()})
    while True:
        command, count, inflight = await anyio.to_thread.run_sync(row.commands.get)
        if command == "stop":
            return
        if command == "seq":
            latencies: list[float] = []
            for i in range(count):
                start = time.perf_counter()
                result = await call(i)
                latencies.append(time.perf_counter() - start)
                assert result == i + 1, result
            row.results.put(latencies)
            continue
        elapsed, cpu = await _concurrently(call, sleep0, count, inflight)
        row.results.put([elapsed, cpu])


# -- raw aiormq --------------------------------------------------------------------------


class _Request(msgspec.Struct):
    args: tuple[int, int]
    kwargs: dict[str, Any]


class _Reply(msgspec.Struct):
    body: int


async def raw_aiormq(
    uri: str, row: _Pipe, read_size: int | None = None, *, in_thread: bool = False
) -> None:
    """A minimal RPC on aiormq (asyncio): the baseline (aiormq's defaults, or `read_size`).

    With `in_thread`, the server decodes each request and computes its answer in a
    worker thread of asyncio's default executor, as a blocking method must run.
    """
    name = f"bench-rpc-raw-{uuid.uuid4().hex[:8]}"
    queue = f"{name}__add"
    request_decoder = msgspec.json.Decoder(_Request)
    reply_decoder = msgspec.json.Decoder(_Reply)
    encoder = msgspec.json.Encoder()
    connection = await aiormq.connect(uri, **connect_kwargs(read_size))
    try:
        server = await connection.channel()
        await server.exchange_declare(name, exchange_type="direct", durable=False)
        await server.queue_declare(queue, durable=False, auto_delete=True)
        await server.queue_bind(queue, name, routing_key=queue)
        await server.basic_qos(prefetch_count=PREFETCH)

        def answer(body: bytes) -> bytes:
            request = request_decoder.decode(body)
            return encoder.encode({"body": sum(request.args), "__end__": True})

        loop = asyncio.get_running_loop()

        async def serve(message: aiormq.abc.DeliveredMessage) -> None:
            if in_thread:
                reply = await loop.run_in_executor(None, answer, message.body)
            else:
                reply = answer(message.body)
            props = message.header.properties
            await server.basic_publish(
                reply,
                exchange="",
                routing_key=props.reply_to or "",
                properties=spec.Basic.Properties(
                    correlation_id=props.correlation_id, content_type="application/json"
                ),
            )
            await server.basic_ack(message.delivery.delivery_tag)  # type: ignore[union-attr]

        await server.basic_consume(queue, serve)

        client = await connection.channel()
        pending: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: aiormq.abc.DeliveredMessage) -> None:
            future = pending.pop(message.header.properties.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(message.body)

        await client.basic_consume(REPLY_TO, on_reply, no_ack=True)
        ids = itertools.count()

        async def call(a: int) -> int:
            correlation_id = str(next(ids))
            future: asyncio.Future[bytes] = loop.create_future()
            pending[correlation_id] = future
            await client.basic_publish(
                encoder.encode({"args": (a, 1), "kwargs": {}}),
                exchange=name,
                routing_key=queue,
                properties=spec.Basic.Properties(
                    correlation_id=correlation_id,
                    message_id=correlation_id,
                    reply_to=REPLY_TO,
                    content_type="application/json",
                ),
                mandatory=True,
            )
            return reply_decoder.decode(await future).body

        await _serve_row(call, lambda: asyncio.sleep(0), row)
        await server.exchange_delete(name)
    finally:
        await connection.close()


# -- farine ------------------------------------------------------------------------------


class CalcAPI(Protocol):
    """The typed client's view of the server."""

    async def add(self, a: int, b: int) -> int: ...


async def farine_run(uri: str, row: _Pipe, kind: Literal["def", "async", "typed"]) -> None:
    """The same calls through farine: a service in a runtime, and an `AsyncClient`."""

    class AsyncCalc:
        @farine.rpc.method()
        async def add(self, a: int, b: int) -> int:
            return a + b

    class SyncCalc:
        @farine.rpc.method()
        def add(self, a: int, b: int) -> int:
            return a + b

    base = SyncCalc if kind == "def" else AsyncCalc
    name = f"benchrpc{uuid.uuid4().hex[:8]}"
    service = type(name, (base,), {})
    config = Config.from_string(
        f"[DEFAULT]\namqp_uri = {uri}\nprefetch = {PREFETCH}\ndurable = false\n"
    )
    runtime = Runtime(
        [ServiceDefinition(service, "bench", find_entrypoints(service))], config=config
    )
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        if kind == "typed":
            typed = farine.rpc.AsyncClient[CalcAPI](name, settings=config.service(name))
            await _serve_row(lambda a: typed.add(a, 1), anyio.lowlevel.checkpoint, row)
        else:
            rpc = farine.rpc.AsyncClient(name, settings=config.service(name))
            await _serve_row(lambda a: rpc.add(a, 1), anyio.lowlevel.checkpoint, row)
        runtime.stop()
    await _cleanup(uri, name)


async def _cleanup(uri: str, name: str) -> None:
    async def remove() -> None:
        connection = await aiormq.connect(uri)
        channel = await connection.channel()
        await channel.queue_delete(f"{name}__add")
        await channel.exchange_delete(name)
        await connection.close()

    await anyio.to_thread.run_sync(asyncio.run, remove())


def _path_of(label: str) -> str | None:
    """The path a row's label names (None for raw aiormq)."""
    return None if "raw" in label else label.split(",")[0].split()[-1]


def _ratios(figures: Figures, base: Figures) -> dict[str, float]:
    return {
        "p50": figures.p50_ms / base.p50_ms,
        "p99": figures.p99_ms / base.p99_ms,
        "calls_per_s": figures.calls_per_s / base.calls_per_s,
        "cpu_us_per_call": figures.cpu_us_per_call / base.cpu_us_per_call,
    }


def _run_rounds(active: list[Row], args: argparse.Namespace, label: str, turn: int) -> int:
    """One repeat of the benchmark: `--rounds` rounds of turns; returns the next turn."""
    calls: int = args.calls
    concurrent: int = args.concurrent
    inflight: int = args.inflight
    rounds: int = args.rounds
    batches = max(1, calls // BATCH)
    chunks = max(1, concurrent // CHUNK)
    for round_ in range(1, rounds + 1):
        for _ in range(batches):
            for row in active[turn % len(active) :] + active[: turn % len(active)]:
                row.latencies += row.ask("seq", calls // batches)
            turn += 1
        for _ in range(chunks):
            for row in active[turn % len(active) :] + active[: turn % len(active)]:
                elapsed, cpu = row.ask("conc", concurrent // chunks, inflight)
                row.calls += concurrent // chunks
                row.elapsed += elapsed
                row.cpu += cpu
            turn += 1
        for row in active:
            figures = row.figures()
            print(
                f"  [{label} {round_}/{rounds}] {row.label:<33} p50 {figures.p50_ms:6.3f} ms  "
                f"p99 {figures.p99_ms:6.3f} ms  {figures.calls_per_s:7.0f} calls/s  "
                f"{figures.cpu_us_per_call:4.0f} us CPU/call  (so far)",
                flush=True,
            )
    return turn


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls (latency)")
    parser.add_argument("--concurrent", type=int, default=20000, help="calls for calls/s")
    parser.add_argument("--inflight", type=int, default=64, help="calls in flight (calls/s)")
    parser.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per repeat (all count)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the whole; medians")
    parser.add_argument("--fast-path", choices=CHOICES, default=None, help="default: both")
    parser.add_argument("--only", default="", help="run the rows whose names contain this")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=PATH of a farine checkout whose rows to run too (repeat; see above)",
    )
    parser.add_argument("--row", default="", help=argparse.SUPPRESS)  # one row's process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uri: str = args.uri
    raw = "raw aiormq (asyncio)"
    path_list = ["fast", "stock", "auto"] if args.row else paths(args.fast_path)

    def farine_row(
        kind: Literal["def", "async", "typed"], backend: str
    ) -> Callable[[_Pipe], object]:
        return lambda row: anyio.run(farine_run, uri, row, kind, backend=backend)

    setups: dict[str, Callable[[_Pipe], object]] = {
        raw: lambda row: asyncio.run(raw_aiormq(uri, row)),
        "raw aiormq, 64 KiB reads": lambda row: asyncio.run(raw_aiormq(uri, row, FARINE_READ_SIZE)),
        "raw aiormq, method in thread": lambda row: asyncio.run(
            raw_aiormq(uri, row, in_thread=True)
        ),
    }
    for backend in ("asyncio", "trio"):
        for path in path_list:
            setups[f"farine {backend} {path}, async def"] = farine_row("async", backend)
            setups[f"farine {backend} {path}, async def, typed"] = farine_row("typed", backend)
            setups[f"farine {backend} {path}, def"] = farine_row("def", backend)
    if args.row:  # one row, in its own process, run by the coordinator below
        setups[args.row](_Pipe())
        return
    only: str = args.only
    repeat = max(1, args.repeat)
    # One process per row (one farine runtime per process), all set up at once.
    labels = [label for label in setups if not only or only in label or label == raw]
    trees = [tree_arg(str(given), "rpc.py") for given in args.tree]
    if trees:  # raw aiormq's rows once, farine's once per tree
        active = [Row(label, ["--uri", uri], None) for label in labels if "raw" in label] + [
            Row(label, ["--uri", uri], _path_of(label), tree)
            for tree in trees
            for label in labels
            if "raw" not in label
        ]
    else:
        active = [Row(label, ["--uri", uri], _path_of(label)) for label in labels]
    for row in active:
        row.process.check_ready()
    # Rows take turns, a batch each (the first row of each turn moves on by one), so
    # that the speed of this VM, which drifts within a minute, weighs on each alike.
    turn = 0
    runs: dict[str, list[Figures]] = {row.label: [] for row in active}
    ratio_runs: dict[str, list[dict[str, float]]] = {row.label: [] for row in active}
    for n in range(1, repeat + 1):
        for row in active:
            row.reset()
        turn = _run_rounds(active, args, f"{n}/{repeat}", turn)
        figures = {row.label: row.figures() for row in active}
        for label, f in figures.items():
            runs[label].append(f)
            ratio_runs[label].append(_ratios(f, figures[raw]))
    for row in active:
        row.ask("stop")
    for row in active:
        if row.process.process.wait() != 0:
            raise RuntimeError(f"row {row.label!r} failed while stopping")
    rows = {
        label: Figures(
            p50_ms=median([f.p50_ms for f in fs]),
            p99_ms=median([f.p99_ms for f in fs]),
            calls_per_s=median([f.calls_per_s for f in fs]),
            cpu_us_per_call=median([f.cpu_us_per_call for f in fs]),
        )
        for label, fs in runs.items()
    }
    ratios = {
        label: {key: round(median([r[key] for r in rs]), 3) for key in rs[0]}
        for label, rs in ratio_runs.items()
    }
    print()
    print(f"median of {repeat} runs (ratios: the median of each run's ratio to raw aiormq)")
    header = f"{'workload':<33} {'p50 ms':>7} {'p99 ms':>7} {'calls/s':>8} {'p50 x raw':>10}"
    print(header + f" {'calls/s x raw':>14} {'CPU us/call':>12}")
    for label, figures in rows.items():
        ratio = ratios[label]
        print(
            f"{label:<33} {figures.p50_ms:>7.3f} {figures.p99_ms:>7.3f} "
            f"{figures.calls_per_s:>8.0f} {ratio['p50']:>10.2f} {ratio['calls_per_s']:>14.2f}"
            f" {figures.cpu_us_per_call:>12.0f}"
        )
    trio_vs_asyncio: dict[str, float] = {}
    for path in paths(args.fast_path):
        for kind in ("async def", "def"):
            a = rows.get(f"farine asyncio {path}, {kind}")
            t = rows.get(f"farine trio {path}, {kind}")
            if a is not None and t is not None:
                trio_vs_asyncio[f"{path}, {kind}"] = round(t.calls_per_s / a.calls_per_s, 3)
    threaded = rows.get("raw aiormq, method in thread")
    def_ratios = {
        label: {
            "p50": round(f.p50_ms / threaded.p50_ms, 3),
            "calls_per_s": round(f.calls_per_s / threaded.calls_per_s, 3),
        }
        for label, f in rows.items()
        if threaded is not None and label.endswith(", def")
    }
    print(
        json.dumps(
            {
                "calls": args.calls,
                "concurrent": args.concurrent,
                "inflight": args.inflight,
                "prefetch": PREFETCH,
                "rounds": args.rounds,
                "repeat": repeat,
                "figures": {
                    label: {
                        "p50_ms": round(f.p50_ms, 3),
                        "p99_ms": round(f.p99_ms, 3),
                        "calls_per_s": round(f.calls_per_s),
                        "cpu_us_per_call": round(f.cpu_us_per_call),
                    }
                    for label, f in rows.items()
                },
                "ratio_to_raw_aiormq": ratios,
                "trio_to_asyncio_calls_per_s": trio_vs_asyncio,
                "def_ratio_to_raw_in_thread": def_ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
