"""RPC over AMQP, on memory:// and RabbitMQ, on both backends."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

import farine.execute
import farine.rpc
from farine import settings
from farine._connections import get_connection
from farine.discovery import find_entrypoints
from farine.exceptions import RPCError, RPCTimeout
from farine.rpc._router import open_router
from tests.amqp.conftest import Broker, Recorder, instance_of, running

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Generator

    from farine.runtime import Runtime

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_script_loop")]


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Label:
    text: str
    size: int = 1


def unique(cls: type, broker: Broker) -> type:
    """A subclass with a unique service name; its queues are cleaned up after the test."""
    name = f"{cls.__name__.lower()}{uuid.uuid4().hex[:8]}"
    new = type(name, (cls,), {})
    broker.exchanges.append(name)
    broker.queues.extend(f"{name}__{attr}" for attr, _ in find_entrypoints(new))
    return new


@contextlib.asynccontextmanager
async def serve(*classes: type, broker: Broker, **keys: object) -> AsyncGenerator[Runtime]:
    """Run `classes` on `broker`; the test's own clients use the same configuration."""
    config = broker.config("", **keys)
    settings.use(config)
    async with running(*classes, config=config) as runtime:
        yield runtime


class Calc:
    def __init__(self) -> None:
        self.closed = Recorder()

    @farine.rpc.method()
    def add(self, a: int, b: int = 0) -> int:
        return a + b

    @farine.rpc.method()
    async def norm(self, p: Point, *, scale: int = 1) -> int:
        return (p.x * p.x + p.y * p.y) * scale

    @farine.rpc.method()
    def seed_style(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    @farine.rpc.method()
    def label(self, label: Label) -> Label:
        return Label(label.text.upper(), label.size + 1)

    @farine.rpc.method()
    def count(self, n: int) -> Generator[int]:
        try:
            yield from range(n)
        finally:
            self.closed.add("count")

    @farine.rpc.method()
    async def acount(self, n: int) -> AsyncGenerator[dict[str, int]]:
        try:
            for i in range(n):
                yield {"i": i}
                await anyio.lowlevel.checkpoint()
        finally:
            self.closed.add("acount")

    @farine.rpc.method(expected=(KeyError,))
    def fail(self, kind: str) -> None:
        if kind == "key":
            raise KeyError("missing")
        raise ValueError(f"bad {kind}")

    @farine.rpc.method()
    def fail_midstream(self) -> Generator[int]:
        yield 1
        raise RuntimeError("broke after one")


async def test_sync_and_async_methods_with_typed_arguments(broker: Broker) -> None:
    svc = unique(Calc, broker)
    name = svc.__name__
    async with serve(svc, broker=broker), farine.rpc.Client(name, timeout=10) as rpc:
        assert await rpc.add(1, 2) == 3
        assert await rpc.add(a=4) == 4
        assert await rpc.norm({"x": 3, "y": 4}, scale=2) == 50
        assert await rpc.label({"text": "hi"}) == {"text": "HI", "size": 2}
        assert await rpc.seed_style(1, "a", k=[1]) == {"args": [1, "a"], "kwargs": {"k": [1]}}


async def test_arguments_that_do_not_fit_are_an_error_naming_the_parameter(broker: Broker) -> None:
    svc = unique(Calc, broker)
    async with serve(svc, broker=broker), farine.rpc.Client(svc.__name__, timeout=10) as rpc:
        with pytest.raises(RPCError, match=r"argument 'a': Expected `int`, got `str`"):
            await rpc.add("one")
        with pytest.raises(RPCError, match="missing a required argument: 'p'"):
            await rpc.norm()
        with pytest.raises(RPCError, match=r"argument 'p': Object missing required field `y`"):
            await rpc.norm({"x": 1})
        assert await rpc.add(1, 1) == 2  # the method keeps serving


async def test_streams_from_generators_and_async_generators(broker: Broker) -> None:
    svc = unique(Calc, broker)
    async with serve(svc, broker=broker), farine.rpc.Client(svc.__name__, timeout=10) as rpc:
        assert [i async for i in rpc.count(5, __stream__=True)] == [0, 1, 2, 3, 4]
        assert [i async for i in rpc.acount(3, __stream__=True)] == [
            {"i": 0},
            {"i": 1},
            {"i": 2},
        ]
        assert [i async for i in rpc.count(0, __stream__=True)] == []
        # A plain call of a generator method returns its first item, as the seed did.
        assert await rpc.count(3) == 0


async def test_leaving_a_stream_early_closes_the_servers_generator(broker: Broker) -> None:
    svc = unique(Calc, broker)
    async with serve(svc, broker=broker) as runtime:
        instance = instance_of(runtime, svc.__name__, Calc)
        async with farine.rpc.Client(svc.__name__, timeout=10) as rpc:
            for method in ("count", "acount"):
                stream = rpc.call(method, 1_000_000, __stream__=True)
                got = [await stream.__anext__() for _ in range(3)]
                assert len(got) == 3
                # Counted before closing: the server may close its generator at once.
                closed_before = len(instance.closed.items)
                await stream.aclose()
                closed = await instance.closed.wait_for(closed_before + 1)
                assert closed[-1] == method
            assert await rpc.add(2, 2) == 4


async def test_a_plain_call_of_a_generator_method_stops_it_after_the_first_item(
    broker: Broker,
) -> None:
    svc = unique(Calc, broker)
    async with serve(svc, broker=broker) as runtime:
        instance = instance_of(runtime, svc.__name__, Calc)
        async with farine.rpc.Client(svc.__name__, timeout=30) as rpc:
            with anyio.fail_after(10):  # not the call's 30 s deadline
                assert await rpc.count(1_000_000) == 0
                assert await instance.closed.wait_for(1) == ["count"]
                assert await rpc.acount(1_000_000) == {"i": 0}
                assert await instance.closed.wait_for(2) == ["count", "acount"]
                assert await rpc.count(0) is None  # an empty stream: no value


async def test_calls_to_a_legacy_server_take_replies_through_a_reply_queue(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    # A farine server replies to the default exchange: the reply queue gets that too.
    caplog.set_level(logging.INFO, logger="farine.rpc")
    svc = unique(Calc, broker)
    name = svc.__name__
    async with (
        serve(svc, broker=broker, rpc_legacy_servers=name) as runtime,
        farine.rpc.Client(name, timeout=10) as rpc,
    ):
        instance = instance_of(runtime, name, Calc)
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            results[i] = await rpc.add(i, 1)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(20):  # the first ones all wait for the reply queue
                    tg.start_soon(one, i)
            assert results == {i: i + 1 for i in range(20)}
            assert [i async for i in rpc.count(3, __stream__=True)] == [0, 1, 2]
            stream = rpc.acount(1_000_000, __stream__=True)
            assert await stream.__anext__() == {"i": 0}
            await stream.aclose()
            assert await instance.closed.wait_for(2) == ["count", "acount"]
    opened = [r.getMessage() for r in caplog.records if "come through" in r.getMessage()]
    assert len(opened) == 1  # one reply queue, opened by the first call
    assert f"calls to {name} (baguette-messaging) come through farine-rpc-replies-" in opened[0]


async def test_exceptions_reach_the_caller_with_type_message_and_traceback(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="farine")
    svc = unique(Calc, broker)
    async with (
        serve(svc, broker=broker, rpc_send_traceback="true"),
        farine.rpc.Client(svc.__name__, timeout=10) as rpc,
    ):
        with pytest.raises(RPCError) as info:
            await rpc.fail("thing")
        assert info.value.remote_type == "ValueError"
        assert info.value.remote_message == "bad thing"
        assert info.value.remote_traceback is not None
        assert 'raise ValueError(f"bad {kind}")' in info.value.remote_traceback
        with pytest.raises(RPCError) as expected:
            await rpc.fail("key")
        assert expected.value.remote_type == "KeyError"
        stream = rpc.fail_midstream(__stream__=True)
        assert await stream.__anext__() == 1
        with pytest.raises(RPCError, match="RuntimeError: broke after one"):
            await stream.__anext__()
    # Expected exceptions are part of the contract: logged at INFO, not as errors.
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("fail raised" in r.getMessage() for r in errors)
    assert not any("KeyError" in (r.exc_text or "") for r in errors)
    infos = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any("raised KeyError" in message for message in infos)


async def test_traceback_text_is_not_sent_when_disabled(broker: Broker) -> None:
    svc = unique(Calc, broker)
    async with (
        serve(svc, broker=broker, rpc_send_traceback="false"),
        farine.rpc.Client(svc.__name__, timeout=10) as rpc,
    ):
        with pytest.raises(RPCError) as info:
            await rpc.fail("x")
    assert info.value.remote_traceback is None
    assert info.value.remote_type == "ValueError"


class Slow:
    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = anyio.Event()

    @farine.rpc.method()
    async def wait(self) -> str:
        self.started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "late"


async def test_slow_server_hits_the_deadline_and_its_handler_is_cancelled(broker: Broker) -> None:
    svc = unique(Slow, broker)
    async with serve(svc, broker=broker) as runtime:
        instance = instance_of(runtime, svc.__name__, Slow)
        async with farine.rpc.Client(svc.__name__) as rpc:
            with pytest.raises(RPCTimeout, match="timeout") as info:
                await rpc.wait(__timeout__=0.5)
            assert "no reply within 0.5s" in str(info.value)
            with anyio.fail_after(10):
                await instance.cancelled.wait()


class Gate:
    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()

    @farine.rpc.method()
    async def hold(self, n: int) -> int:
        self.entered.set()
        await self.release.wait()
        return n


async def test_a_shorter_deadline_than_the_calls_in_flight_still_ends_on_time(
    broker: Broker,
) -> None:
    svc = unique(Gate, broker)
    async with serve(svc, broker=broker) as runtime:
        instance = instance_of(runtime, svc.__name__, Gate)
        results: list[int] = []
        async with (
            farine.rpc.Client(svc.__name__, timeout=30) as rpc,
            anyio.create_task_group() as tg,
        ):

            async def long_call() -> None:
                results.append(await rpc.hold(1))

            tg.start_soon(long_call)
            await instance.entered.wait()  # a call due in 30 s is in flight
            with anyio.fail_after(10), pytest.raises(RPCError, match=r"no reply within 0\.3s"):
                await rpc.hold(2, __timeout__=0.3)
            instance.release.set()
        assert results == [1]


async def test_calls_in_flight_when_their_router_closes_end_at_once(broker: Broker) -> None:
    svc = unique(Gate, broker)
    async with serve(svc, broker=broker) as runtime:
        service = runtime.services[svc.__name__]
        instance = service.instance
        assert isinstance(instance, Gate)
        ended = anyio.Event()
        connection = await get_connection(service.settings)
        async with anyio.create_task_group() as tg:
            # A router of its own (a client inside a runtime shares the runtime's).
            async with open_router(connection) as router:
                rpc = farine.rpc.AsyncClient(svc.__name__, 30, router=router)

                async def call() -> None:
                    with pytest.raises(RPCError, match="client was closed"):
                        await rpc.hold(1)
                    ended.set()

                tg.start_soon(call)
                await instance.entered.wait()
            # The router closed with the call in flight: the call does not wait 30 s.
            with anyio.fail_after(10):
                await ended.wait()
            instance.release.set()


async def test_many_concurrent_calls_each_get_their_own_answer(broker: Broker) -> None:
    svc = unique(Calc, broker)
    results: dict[int, int] = {}
    async with (
        serve(svc, broker=broker, prefetch=64),
        farine.rpc.Client(svc.__name__, timeout=30) as rpc,
    ):

        async def one(i: int) -> None:
            results[i] = await rpc.add(i, 1000)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)
    assert results == {i: i + 1000 for i in range(200)}


async def test_injected_clients_in_def_and_async_def_methods(broker: Broker) -> None:
    server = unique(Calc, broker)
    target = server.__name__
    results = Recorder()

    class Client:
        @farine.execute.method(restart=False)
        def from_thread(self) -> None:
            self.sync_call(3)

        @farine.rpc.client(target)
        def sync_call(self, rpc: farine.rpc.Client, n: int) -> None:
            results.add(("sync", rpc.add(n, 1)))
            results.add(("sync-stream", list(rpc.count(n, __stream__=True))))

        @farine.execute.method(restart=False)
        async def from_loop(self) -> None:
            await self.async_call(4)

        @farine.rpc.client(target, timeout=10)
        async def async_call(self, rpc: farine.rpc.AsyncClient, n: int) -> None:
            results.add(("async", await rpc.add(n, 1)))
            results.add(("async-stream", [i async for i in rpc.count(n, __stream__=True)]))

    caller = unique(Client, broker)
    async with serve(server, caller, broker=broker):
        found = await results.wait_for(4)
    assert sorted(found) == sorted(
        [("sync", 4), ("sync-stream", [0, 1, 2]), ("async", 5), ("async-stream", [0, 1, 2, 3])]
    )


async def test_blocking_client_from_a_plain_thread_like_a_script(broker: Broker) -> None:
    svc = unique(Calc, broker)
    async with serve(svc, broker=broker):
        stopped_early: list[int] = []

        def script() -> tuple[int, list[int]]:
            rpc = farine.rpc.Client(svc.__name__, timeout=10)
            total = rpc.add(20, 22)
            items = list(rpc.count(4, __stream__=True))
            for item in rpc.count(1000, __stream__=True):
                if item == 2:
                    stopped_early.append(item)
                    break
            return total, items

        result: list[tuple[int, list[int]]] = []
        thread = threading.Thread(target=lambda: result.append(script()))
        thread.start()
        await anyio.to_thread.run_sync(thread.join, 30)
    assert result == [(42, [0, 1, 2, 3])]
    assert stopped_early == [2]
