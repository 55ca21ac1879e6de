"""nameko's rows of `bench/peers.py`, run in nameko's own virtualenv (not a test).

    python nameko_row.py consume URI QUEUE   # drain QUEUE on command
    python nameko_row.py rpc URI             # an `add` RPC method and a cluster proxy

It speaks `bench/peers.py`'s protocol: one JSON line `{"ready": false}` once set up,
then one JSON line per command read on stdin (see `bench/peers.py`).
"""

from __future__ import annotations

import warnings

# eventlet warns at import that it is deprecated: a notice, not a finding of the bench.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()  # nameko's own runner does this before anything else

import collections  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import eventlet.event  # noqa: E402
import eventlet.tpool  # noqa: E402
from kombu.messaging import Exchange, Queue  # noqa: E402
from nameko.containers import ServiceContainer  # noqa: E402
from nameko.messaging import consume as nameko_consume  # noqa: E402
from nameko.rpc import rpc as nameko_rpc  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

#: nameko's prefetch is its container's `max_workers` (one green thread per message).
PREFETCH = 256
RPC_PREFETCH = 64
WARMUP = 200


def answer(result: object) -> None:
    print(json.dumps(result), flush=True)


def command() -> list[Any]:
    # A blocking read in a real thread, so that the hub (heartbeats) keeps running.
    line = eventlet.tpool.execute(sys.stdin.readline)
    return json.loads(line or '["stop", 0, 0]')


def consume(uri: str, queue: str) -> None:
    """Drain `queue` (filled by the coordinator) `n` messages at a time, on command.

    nameko has no typed body: the handler gets the dict kombu decodes from the JSON.
    """
    state: dict[str, Any] = {}

    class Bench:
        name = f"benchpeers{uuid.uuid4().hex[:8]}"

        @nameko_consume(
            Queue(queue, exchange=Exchange(queue, type="direct", durable=True), routing_key="rk")
        )
        def handle(self, body: dict[str, Any]) -> None:
            state["handled"] += 1
            if state["handled"] == 1:
                state["first"] = (time.perf_counter(), time.process_time())
            if state["handled"] == state["target"]:
                state["last"] = (time.perf_counter(), time.process_time())
                state["done"].send()

    config = {"AMQP_URI": uri, "max_workers": PREFETCH}
    answer({"ready": False})
    while True:
        name, count, *_ = command()
        if name == "stop":
            return
        state.update(handled=0, target=count, done=eventlet.event.Event())
        container = ServiceContainer(Bench, config)
        container.start()
        state["done"].wait()
        container.stop()
        first, last = state["first"], state["last"]
        answer([last[0] - first[0], last[1] - first[1], count - 1])


def rpc(uri: str) -> None:
    """`add(a, b)` served by an `@rpc` method, called through a `ClusterRpcProxy`.

    The proxy is not safe to share between green threads: calls in flight are a window
    of `call_async` replies, the oldest awaited before the next call is sent.
    """

    class Calc:
        name = f"benchpeers{uuid.uuid4().hex[:8]}"

        @nameko_rpc
        def add(self, a: int, b: int) -> int:
            return a + b

    config = {"AMQP_URI": uri, "max_workers": RPC_PREFETCH}
    container = ServiceContainer(Calc, config)
    container.start()
    with ClusterRpcProxy(config) as cluster:
        service = getattr(cluster, Calc.name)
        for i in range(WARMUP):
            assert service.add(i, 1) == i + 1
        answer({"ready": False})
        while True:
            name, count, inflight = command()
            if name == "stop":
                break
            if name == "seq":
                latencies: list[float] = []
                for i in range(count):
                    start = time.perf_counter()
                    assert service.add(i, 1) == i + 1
                    latencies.append(time.perf_counter() - start)
                answer(latencies)
                continue
            start, cpu = time.perf_counter(), time.process_time()
            window: collections.deque[tuple[int, Any]] = collections.deque()
            for i in range(count):
                if len(window) == inflight:
                    a, reply = window.popleft()
                    assert reply.result() == a + 1
                window.append((i, service.add.call_async(i, 1)))
            while window:
                a, reply = window.popleft()
                assert reply.result() == a + 1
            answer([time.perf_counter() - start, time.process_time() - cpu])
    container.stop()


def main() -> None:
    workload, uri, *rest = sys.argv[1:]
    if workload == "consume":
        consume(uri, rest[0])
    else:
        rpc(uri)


if __name__ == "__main__":
    main()
