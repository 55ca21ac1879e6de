"""farine against FastStream and nameko, with raw aiormq as the reference (not a test).

Two workloads, the same for every framework, against the local RabbitMQ:

* consume: a durable queue, bound to a durable direct exchange, is filled by raw aiormq
  (in this process, publisher confirms) with `--batch` persistent 100-byte JSON
  messages; then the row starts its consumer (prefetch 256), which decodes each body
  into the framework's typed model and acks it, and stops it once the batch is handled.
  The clock runs from the first message handled to the last (start-up and the fill
  are not counted): messages per second, and the CPU time the row's process spent per
  message meanwhile;
* rpc: one method `add(a: int, b: int) -> int` served and called in the row's process:
  p50 of `--calls` sequential calls, and calls per second with `--inflight` calls in
  flight (`--concurrent` in all).

Rows (each in a process of its own):

* raw aiormq (asyncio), the reference: for consume, `basic_consume` with prefetch 256,
  msgspec decoding, an ack each; for rpc, `bench/rpc.py`'s raw row (direct reply-to);
* farine on asyncio and on trio, `async def` handlers, the default path
  (`FARINE_AMQP_FAST_PATH` unset: the fast path on verified versions): a
  `@farine.amqp.consume` handler with a msgspec Struct body; for rpc, `bench/rpc.py`'s
  rows (`@farine.rpc.method()`, `farine.rpc.AsyncClient`);
* FastStream (`bench/peers/faststream_row.py`): an `async def` subscriber with a pydantic
  model, prefetch set by `Channel(prefetch_count=...)`; rpc through `broker.request`
  (direct reply-to), which takes one lock per request, so that its calls in flight
  go out one at a time;
* nameko (`bench/peers/nameko_row.py`): a `@consume` handler (no typed body: the dict
  kombu decodes), whose prefetch is the container's `max_workers` (256); rpc through a
  `ClusterRpcProxy`, calls in flight as a window of `call_async` replies.

FastStream and nameko run in virtualenvs of their own under `~/.cache/farine-bench/`,
created on first use from the pinned requirement files `bench/peers/*.txt` with the
Python of `--peer-python` (default: the base interpreter of this one) and created again
when a requirement file changes.

    python bench/peers.py [--messages 20000] [--batch 2000] [--calls 1000]
        [--concurrent 10000] [--inflight 64] [--repeat 3] [--workload consume|rpc|both]
        [--only nameko] [--peer-python python3.11] [--uri amqp://guest:guest@127.0.0.1:5672/]

All rows are set up at once, then take turns, a batch each (the first row of each turn
moving on by one), so that load from elsewhere on the machine weighs on every row
alike. `--repeat N` runs the whole N times; each row's ratio to raw aiormq is taken
within a run, and the table shows the medians. It prints the table, then one JSON line
with every median.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
import anyio
import msgspec
from _paths import LineProcess, fast_path_enabled, median
from amqp_throughput import Reading, make_body
from pamqp import commands as spec

import farine.amqp
from farine._broker.aiormq.fastpath import ENV_VAR
from farine.discovery import ServiceDefinition, find_entrypoints
from farine.runtime import Runtime
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
PREFETCH = 256
#: Sequential calls and concurrent calls a row makes in its turn.
SEQ_BATCH = 100
CONC_BATCH = 2500
#: Messages each consume row drains once before it is measured.
WARMUP = 1000
RAW = "raw aiormq (asyncio)"
#: The rows of each workload: label -> (kind, backend); kind is raw, farine or a peer.
ROWS: dict[str, tuple[str, str]] = {
    RAW: ("raw", "asyncio"),
    "farine (asyncio)": ("farine", "asyncio"),
    "farine (trio)": ("farine", "trio"),
    "FastStream": ("faststream", "asyncio"),
    "nameko": ("nameko", "eventlet"),
}
#: `bench/rpc.py`'s label of each row that it provides.
RPC_LABELS = {
    RAW: "raw aiormq (asyncio)",
    "farine (asyncio)": "farine asyncio auto, async def",
    "farine (trio)": "farine trio auto, async def",
}


#: The packages of each peer's virtualenv that the JSON line reports.
PEER_PACKAGES = {
    "faststream": ("faststream", "aio-pika", "aiormq", "pydantic"),
    "nameko": ("nameko", "eventlet", "kombu", "amqp"),
}


# -- the rows' processes -------------------------------------------------------------------


class Drain:
    """Counts the messages of one drain; times the first and the last."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.handled = 0
        self.first = (0.0, 0.0)
        self.last = (0.0, 0.0)
        self.done = anyio.Event()

    def hit(self) -> None:
        self.handled += 1
        if self.handled == 1:
            self.first = (time.perf_counter(), time.process_time())
        if self.handled == self.count:
            self.last = (time.perf_counter(), time.process_time())
            self.done.set()

    def result(self) -> list[float]:
        """Elapsed and CPU seconds from the first message to the last, and the intervals."""
        return [self.last[0] - self.first[0], self.last[1] - self.first[1], self.count - 1]


async def _commands(drain: Callable[[Drain], Any]) -> None:
    """Answer the coordinator: `["drain", n, 0]` drains n messages; `["stop", 0, 0]`."""
    print(json.dumps({"ready": fast_path_enabled()}), flush=True)
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        name, count, _ = json.loads(line or '["stop", 0, 0]')
        if name == "stop":
            return
        tally = Drain(count)
        await drain(tally)
        print(json.dumps(tally.result()), flush=True)


async def raw_consume(uri: str, queue: str) -> None:
    """Raw aiormq: consume with prefetch 256, decode with msgspec, ack each message."""
    decoder = msgspec.json.Decoder(Reading)
    connection = await aiormq.connect(uri)
    try:
        channel = await connection.channel(publisher_confirms=False)
        await channel.basic_qos(prefetch_count=PREFETCH)

        async def drain(tally: Drain) -> None:
            async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
                decoder.decode(message.body)
                await channel.basic_ack(message.delivery.delivery_tag)  # type: ignore[union-attr]
                tally.hit()

            ok = await channel.basic_consume(queue, on_message)
            await tally.done.wait()
            await channel.basic_cancel(ok.consumer_tag or "")

        await _commands(drain)
    finally:
        await connection.close()


async def farine_consume(uri: str, queue: str) -> None:
    """farine: a runtime per drain, running one `async def` consumer with a typed body."""
    config = Config.from_string(f"[DEFAULT]\namqp_uri = {uri}\n")

    async def drain(tally: Drain) -> None:
        class Bench:
            @farine.amqp.consume(exchange=queue, routing_key="rk", queue=queue, prefetch=PREFETCH)
            async def handle(self, body: Reading, message: farine.amqp.Message) -> None:
                tally.hit()

        definition = ServiceDefinition(Bench, "bench", find_entrypoints(Bench))
        runtime = Runtime([definition], config=config)
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            await tally.done.wait()
            runtime.stop()

    await _commands(drain)


# -- the coordinator -----------------------------------------------------------------------


def peer_python(peer: str, base: str) -> str:
    """The interpreter of `peer`'s virtualenv, created (again) when its requirements change.

    Raises:
        subprocess.CalledProcessError: The virtualenv could not be created.
    """
    requirements = PEERS / f"{peer}.txt"
    stamp = hashlib.sha256(requirements.read_bytes() + base.encode()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "farine-bench" / peer
    python = venv / "bin" / "python"
    marker = venv / "farine-bench.stamp"
    if not marker.exists() or marker.read_text() != stamp:
        print(f"creating {venv} from {requirements.name} ({base})", flush=True)
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True
        )
        marker.write_text(stamp)
    return str(python)


class Row(LineProcess):
    """A row running in a process of its own, answering one JSON line per command."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(label, argv, env)
        #: Whether farine's fast path runs in the row's process (as the row says).
        self.fast_path = False

    def ask(self, name: str, count: int = 0, inflight: int = 0) -> Any:
        """Send a command; return the row's answer (None for `stop`)."""
        self.send([name, count, inflight])
        return None if name == "stop" else self.answer()

    def close(self) -> None:
        """Stop the row and wait for its process to end.

        Raises:
            RuntimeError: The process failed.
        """
        self.ask("stop")
        if self.process.wait() != 0:
            raise RuntimeError(f"row {self.label!r} failed while stopping")


def start_row(label: str, workload: str, uri: str, queue: str, pythons: dict[str, str]) -> Row:
    """Start `label`'s row of `workload` in a process of its own; wait until it is ready.

    Raises:
        RuntimeError: The row failed to start.
    """
    kind, _ = ROWS[label]
    # Raw aiormq's process has the fast path off (nothing of farine replaces aiormq's
    # globals under it); farine's rows take the default path.
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if kind == "raw":
        env[ENV_VAR] = "off"
    if kind in ("faststream", "nameko"):
        argv = [pythons[kind], str(PEERS / f"{kind}_row.py"), workload, uri]
        argv += [queue] if workload == "consume" else []
    elif workload == "rpc":
        argv = [sys.executable, str(HERE / "rpc.py"), "--uri", uri, "--row", RPC_LABELS[label]]
    else:
        argv = [sys.executable, __file__, "--uri", uri, "--queue", queue, "--row", label]
    row = Row(label, argv, env)
    ready = row.answer()
    if not isinstance(ready, dict) or "ready" not in ready:
        raise RuntimeError(f"row {label!r}: {ready!r}")
    row.fast_path = ready["ready"] is True
    return row


class Filler:
    """Raw aiormq in the coordinator: declares the rows' queues and fills them."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.runner = asyncio.Runner()
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.channel: aiormq.abc.AbstractChannel | None = None

    def open(self) -> None:
        async def connect() -> None:
            self.connection = await aiormq.connect(self.uri)
            self.channel = await self.connection.channel()

        self.runner.run(connect())

    def declare(self, queue: str) -> None:
        """A durable queue bound with `rk` to a durable direct exchange of the same name."""

        async def declare() -> None:
            assert self.channel is not None
            await self.channel.exchange_declare(queue, exchange_type="direct", durable=True)
            await self.channel.queue_declare(queue, durable=True)
            await self.channel.queue_bind(queue, queue, routing_key="rk")

        self.runner.run(declare())

    def fill(self, queue: str, count: int) -> None:
        """Publish `count` messages to `queue`'s exchange, all confirmed.

        Raises:
            RuntimeError: The queue still held messages of the previous batch.
        """

        async def fill() -> None:
            assert self.channel is not None
            left = await self.channel.queue_declare(queue, passive=True)
            if left.message_count:
                raise RuntimeError(f"{queue}: {left.message_count} messages left undrained")
            properties = spec.Basic.Properties(content_type="application/json", delivery_mode=2)
            for start in range(0, count, PREFETCH):
                await asyncio.gather(
                    *(
                        self.channel.basic_publish(
                            make_body(i), exchange=queue, routing_key="rk", properties=properties
                        )
                        for i in range(start, min(count, start + PREFETCH))
                    )
                )

        self.runner.run(fill())

    def close(self, queues: list[str]) -> None:
        async def close() -> None:
            assert self.channel is not None
            assert self.connection is not None
            for queue in queues:
                await self.channel.queue_delete(queue)
                await self.channel.exchange_delete(queue)
            await self.connection.close()

        self.runner.run(close())
        self.runner.close()


def _rotated(rows: list[Row], turn: int) -> list[Row]:
    return rows[turn % len(rows) :] + rows[: turn % len(rows)]


def run_consume(
    labels: list[str], args: argparse.Namespace, pythons: dict[str, str], paths: dict[str, bool]
) -> Any:
    """The consume workload: every run's messages/s and CPU us/message of each row
    (and, in `paths`, whether farine's fast path ran in each row's process)."""
    filler = Filler(args.uri)
    filler.open()
    queues = {label: f"bench-peers-{uuid.uuid4().hex[:8]}" for label in labels}
    for queue in queues.values():
        filler.declare(queue)
    rows = [start_row(label, "consume", args.uri, queues[label], pythons) for label in labels]
    batch: int = args.batch
    runs: list[dict[str, dict[str, float]]] = []
    turn = 0
    try:
        for row in rows:  # warm-up, not counted
            filler.fill(queues[row.label], WARMUP)
            row.ask("drain", WARMUP)
        for n in range(args.repeat):
            sums = {row.label: [0.0, 0.0, 0.0] for row in rows}
            for _ in range(max(1, args.messages // batch)):
                for row in _rotated(rows, turn):
                    filler.fill(queues[row.label], batch)
                    elapsed, cpu, intervals = row.ask("drain", batch)
                    total = sums[row.label]
                    total[0] += elapsed
                    total[1] += cpu
                    total[2] += intervals
                turn += 1
            runs.append(
                {
                    label: {"rate": count / elapsed, "cpu_us": cpu / count * 1e6}
                    for label, (elapsed, cpu, count) in sums.items()
                }
            )
            _progress("consume", n + 1, args.repeat, runs[-1], "messages/s", "rate")
        paths.update({f"consume: {row.label}": row.fast_path for row in rows})
    finally:
        for row in rows:
            row.close()
        filler.close(list(queues.values()))
    return runs


def run_rpc(
    labels: list[str], args: argparse.Namespace, pythons: dict[str, str], paths: dict[str, bool]
) -> Any:
    """The rpc workload: every run's p50, calls/s and CPU us/call of each row
    (and, in `paths`, whether farine's fast path ran in each row's process)."""
    rows = [start_row(label, "rpc", args.uri, "", pythons) for label in labels]
    runs: list[dict[str, dict[str, float]]] = []
    turn = 0
    try:
        for n in range(args.repeat):
            latencies: dict[str, list[float]] = {row.label: [] for row in rows}
            sums = {row.label: [0.0, 0.0, 0] for row in rows}
            for _ in range(max(1, args.calls // SEQ_BATCH)):
                for row in _rotated(rows, turn):
                    latencies[row.label] += row.ask("seq", SEQ_BATCH)
                turn += 1
            chunk = min(CONC_BATCH, args.concurrent)
            for _ in range(max(1, args.concurrent // chunk)):
                for row in _rotated(rows, turn):
                    elapsed, cpu = row.ask("conc", chunk, args.inflight)
                    total = sums[row.label]
                    total[0] += elapsed
                    total[1] += cpu
                    total[2] += chunk
                turn += 1
            runs.append(
                {
                    label: {
                        "p50_ms": median(latencies[label]) * 1000,
                        "calls_per_s": count / elapsed,
                        "cpu_us": cpu / count * 1e6,
                    }
                    for label, (elapsed, cpu, count) in sums.items()
                }
            )
            _progress("rpc", n + 1, args.repeat, runs[-1], "calls/s", "calls_per_s")
        paths.update({f"rpc: {row.label}": row.fast_path for row in rows})
    finally:
        for row in rows:
            row.close()
    return runs


def _progress(
    workload: str, n: int, repeat: int, run: dict[str, dict[str, float]], unit: str, key: str
) -> None:
    for label, figures in run.items():
        print(f"  [{workload} {n}/{repeat}] {label:<18} {figures[key]:8.0f} {unit}", flush=True)


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each row's median figures, and the median of each run's ratio to raw aiormq."""
    summary: dict[str, dict[str, float]] = {}
    for label in runs[0]:
        figures = {key: median([run[label][key] for run in runs]) for key in runs[0][label]}
        for key in runs[0][label]:
            figures[f"{key}_x_raw"] = median([run[label][key] / run[RAW][key] for run in runs])
        summary[label] = {key: round(value, 3) for key, value in figures.items()}
    return summary


def versions(peer_python: str) -> dict[str, str]:
    """The Pythons, and the versions of what each framework's row runs on."""
    found = {
        "python": sys.version.split()[0],
        "peer_python": peer_python,
        **{name: metadata.version(name) for name in ("farine", "aiormq", "pamqp", "msgspec")},
    }
    for peer, names in PEER_PACKAGES.items():
        for line in (PEERS / f"{peer}.txt").read_text().splitlines():
            name, _, version = line.partition("==")
            if name.split("[")[0] in names:
                found[f"{peer}: {name.split('[')[0]}"] = version
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="per row and run (consume)")
    parser.add_argument("--batch", type=int, default=2000, help="messages a row drains per turn")
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls (p50)")
    parser.add_argument("--concurrent", type=int, default=10000, help="calls for calls/s")
    parser.add_argument("--inflight", type=int, default=64, help="calls in flight (calls/s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the whole; medians")
    parser.add_argument("--workload", choices=("consume", "rpc", "both"), default="both")
    parser.add_argument("--only", default="", help="run the rows whose names contain this")
    parser.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument(
        "--peer-python",
        default=str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}"),
        help="the Python of FastStream's and nameko's virtualenvs",
    )
    parser.add_argument("--row", default="", help=argparse.SUPPRESS)  # one row's process
    parser.add_argument("--queue", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.row:  # one consume row, in its own process, run by the coordinator below
        if ROWS[args.row][0] == "raw":
            asyncio.run(raw_consume(args.uri, args.queue))
        else:
            anyio.run(farine_consume, args.uri, args.queue, backend=ROWS[args.row][1])
        return
    args.repeat = max(1, args.repeat)
    labels = [label for label in ROWS if not args.only or args.only in label or label == RAW]
    pythons = {
        kind: peer_python(kind, args.peer_python)
        for kind in ("faststream", "nameko")
        if any(ROWS[label][0] == kind for label in labels)
    }
    result: dict[str, Any] = {"repeat": args.repeat, "prefetch": PREFETCH}
    paths: dict[str, bool] = {}
    if args.workload in ("consume", "both"):
        result["consume"] = summarise(run_consume(labels, args, pythons, paths))
        result["messages"] = args.messages
    if args.workload in ("rpc", "both"):
        result["rpc"] = summarise(run_rpc(labels, args, pythons, paths))
        result.update(calls=args.calls, concurrent=args.concurrent, inflight=args.inflight)
    print()
    print(f"median of {args.repeat} runs (ratios: the median of each run's ratio to raw aiormq)")
    header = f"{'':<20} {'messages/s':>10} {'x raw':>6} {'CPU us/msg':>10}"
    print(header + f" {'calls/s':>8} {'x raw':>6} {'p50 ms':>7} {'x raw':>6} {'CPU us/call':>11}")
    for label in labels:
        line = f"{label:<20}"
        if "consume" in result:
            c = result["consume"][label]
            line += f" {c['rate']:>10.0f} {c['rate_x_raw']:>6.2f} {c['cpu_us']:>10.1f}"
        else:
            line += f" {'':>10} {'':>6} {'':>10}"
        if "rpc" in result:
            r = result["rpc"][label]
            line += f" {r['calls_per_s']:>8.0f} {r['calls_per_s_x_raw']:>6.2f}"
            line += f" {r['p50_ms']:>7.3f} {r['p50_ms_x_raw']:>6.2f} {r['cpu_us']:>11.1f}"
        print(line)
    result["fast_path"] = paths
    result["versions"] = versions(args.peer_python)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
