"""The asyncio loop that trio drives in its own thread (aiormq on the trio backend).

The drivers' own tests run on trio only: they exist only there. Most run on both
drivers, the fast path's `TrioDriver` and the stock path's `SteppedDriver`; the
end-to-end tests run on both backends: on each, the AMQP connection lives in the
service's own thread.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, cast

import anyio
import pytest
import trio
import trio.testing
from pamqp import commands as spec
from pamqp import frame

from farine._broker import ConnectionOptions, open_connection
from farine._broker.aiormq.fastpath.driven import MAX_HELD_BYTES, RoundWriter, TrioDriver
from farine._broker.aiormq.stepped import SteppedDriver
from farine._broker.errors import BrokerUnavailable, PublishError
from farine._broker.interface import Binding, ExchangeSpec, Outgoing, QueueSpec, Topology
from farine._broker.message import Properties
from tests.amqp import _rabbit
from tests.amqp._engine_loop import driven, driven_by

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

pytestmark = [pytest.mark.anyio, pytest.mark.fastpath]

trio_only = pytest.mark.parametrize("anyio_backend", ["trio"])

Driver = TrioDriver | SteppedDriver


@pytest.fixture(params=[TrioDriver, SteppedDriver], ids=["fast", "stock"])
def make_driver(request: pytest.FixtureRequest) -> type[Driver]:
    """Each driver class: the fast path's and the stock path's."""
    return cast("type[Driver]", request.param)


@trio_only
async def test_calls_timers_and_errors_run_on_the_driven_loop(make_driver: type[Driver]) -> None:
    async with driven_by(make_driver) as driver:

        async def where() -> tuple[asyncio.AbstractEventLoop, int]:
            return asyncio.get_running_loop(), threading.get_ident()

        loop, thread = await driver.run(where())
        assert loop is driver.loop
        assert thread == threading.get_ident()
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # asyncio runs only inside the driver's steps

        started = time.monotonic()
        with trio.fail_after(5):
            await driver.run(asyncio.sleep(0.05))  # the driver waits for the loop's timer
        assert time.monotonic() - started >= 0.05

        async def fail() -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await driver.run(fail())
    assert driver.loop.is_closed()


@trio_only
async def test_steps_set_the_loop_up_as_run_forever_does(make_driver: type[Driver]) -> None:
    """In a step the loop runs and owns the async generators started there (an abandoned
    one is closed on the loop); after it, trio's hooks are back."""
    closed = trio.Event()

    async def numbers() -> AsyncGenerator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.set()

    async def start_one() -> tuple[bool, AsyncGenerator[int]]:
        generator = numbers()
        assert await anext(generator) == 1
        return asyncio.get_running_loop().is_running(), generator

    async with driven_by(make_driver) as driver:
        hooks = sys.get_asyncgen_hooks()
        running, generator = await driver.run(start_one())
        assert running
        assert not driver.loop.is_running()
        assert sys.get_asyncgen_hooks() == hooks
        del generator
        gc.collect()  # asyncio's finalizer schedules its `aclose()` on the loop
        with trio.fail_after(5):
            await closed.wait()


@trio_only
async def test_work_scheduled_from_trio_or_other_threads_wakes_the_driver(
    make_driver: type[Driver],
) -> None:
    async with driven_by(make_driver) as driver:
        event = asyncio.Event()
        results: list[str] = []

        async def wait_then_record() -> None:
            await driver.run(event.wait())
            results.append("woken")

        with trio.fail_after(5):
            async with trio.open_nursery() as waiters:
                waiters.start_soon(wait_then_record)
                await trio.testing.wait_all_tasks_blocked()
                assert results == []
                event.set()  # from trio, outside any step: no I/O to wake the driver
        assert results == ["woken"]

        async def answer() -> int:
            await asyncio.sleep(0)
            return 42

        # From a worker thread: through the loop's self-pipe, which trio watches.
        with trio.fail_after(5):
            value = await trio.to_thread.run_sync(driver.run_blocking, answer(), 5.0)
        assert value == 42
        with pytest.raises(RuntimeError, match="blocking publish"):
            driver.run_blocking(answer(), 5.0)


@trio_only
async def test_a_timer_set_by_a_call_run_in_the_callers_task_still_fires(
    make_driver: type[Driver],
) -> None:
    """`run()` steps the loop itself; the idle driver must then shorten its wait."""
    fired = trio.Event()

    async def set_timer() -> None:
        asyncio.get_running_loop().call_later(0.02, fired.set)

    async with driven_by(make_driver) as driver:
        await trio.testing.wait_all_tasks_blocked()  # the driver waits, with no timer
        await driver.run(set_timer())  # completes within the caller's own step
        with trio.fail_after(5):  # no I/O will come: only the timer can wake the driver
            await fired.wait()


@trio_only
async def test_a_call_that_makes_nothing_ready_runs_no_step_and_its_timer_still_fires() -> None:
    """`call_in_step()` steps only when something is ready (a publish that writes its frames
    itself only arms a timer); the idle driver still wakes for that timer."""
    fired = trio.Event()
    ran: list[int] = []
    async with driven() as driver:
        loop = driver.loop
        await trio.testing.wait_all_tasks_blocked()  # the driver waits, with no timer
        steps: list[bool] = []
        step = loop.step

        def counted(*, poll: bool = True) -> None:
            steps.append(poll)
            step(poll=poll)

        vars(loop)["step"] = counted
        try:
            driver.call_in_step(loop.call_later, 0.02, fired.set)
            assert steps == []
            driver.call_in_step(loop.call_soon, ran.append, 1)
            assert (steps, ran) == ([False], [1])
        finally:
            del vars(loop)["step"]
        with trio.fail_after(5):  # no I/O will come: only the timer can wake the driver
            await fired.wait()


@trio_only
async def test_a_step_runs_what_its_callbacks_make_ready_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rounds after a step's first run what became ready, in order, skipping what was
    cancelled, up to the step's bound; the rest runs in later steps."""
    order: list[str] = []

    async def chain() -> None:
        loop = asyncio.get_running_loop()

        def first() -> None:
            order.append("first")
            loop.call_soon(order.append, "third")
            loop.call_soon(order.append, "fourth").cancel()

        loop.call_soon(first)
        loop.call_soon(order.append, "second")

        def again(left: int) -> None:  # far more rounds than one step runs
            if left:
                loop.call_soon(again, left - 1)
            else:
                order.append("last")
                done.set()

        loop.call_soon(again, 100)

    done = trio.Event()
    async with driven() as driver:
        with trio.fail_after(5), caplog.at_level(logging.ERROR, logger="asyncio"):
            await driver.run(chain())
            await done.wait()
    assert order == ["first", "second", "third", "last"]
    assert not caplog.records  # a cancelled callback is skipped, not run


@trio_only
async def test_in_debug_mode_every_round_of_a_step_reports_slow_callbacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def slow() -> None:
        time.sleep(0.01)
        ran.set()  # the loop reports it right after it returns, in the same step

    async def schedule_slow_later() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, slow)  # runs two rounds after this one

    ran = trio.Event()
    async with driven() as driver:
        driver.loop.set_debug(True)
        driver.loop.slow_callback_duration = 0.005
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            await driver.run(schedule_slow_later())
            with trio.fail_after(5):
                await ran.wait()
        driver.loop.set_debug(False)
    assert any("slow" in record.getMessage() for record in caplog.records)


@trio_only
@pytest.mark.parametrize("attempt", range(4))  # trio shuffles which task runs first
async def test_a_call_made_as_soon_as_the_driver_started_runs_to_the_end(
    attempt: int, make_driver: type[Driver]
) -> None:
    # The call needs more steps than the caller's own: the stepper task runs them, so it
    # must already be waiting when `drive()` reports that it started.
    async def many_steps() -> int:
        for _ in range(100):
            await asyncio.sleep(0)
        return attempt

    with trio.fail_after(5):
        async with driven_by(make_driver) as driver:
            assert await driver.run(many_steps()) == attempt


@trio_only
async def test_cancelling_the_caller_cancels_the_coroutine(make_driver: type[Driver]) -> None:
    cancelled = trio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with driven_by(make_driver) as driver:
        with trio.move_on_after(0.05) as scope:
            await driver.run(slow())
        assert scope.cancelled_caught
        with trio.fail_after(5):
            await cancelled.wait()


@trio_only
async def test_calls_cut_short_by_the_loop_stopping_fail_as_a_closed_connection(
    make_driver: type[Driver],
) -> None:
    errors: list[PublishError] = []
    async with driven_by(make_driver) as driver:

        async def caller() -> None:
            try:
                await driver.run(asyncio.sleep(30))
            except PublishError as exc:
                errors.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as callers:
                callers.start_soon(caller)
                await trio.testing.wait_all_tasks_blocked()
                await driver.stop()
        assert [str(exc) for exc in errors] == ["the AMQP connection is closed"]
        with pytest.raises(PublishError, match="closed"):
            await driver.run(asyncio.sleep(0))


@trio_only
async def test_the_driver_outlives_cancellation_until_stopped(make_driver: type[Driver]) -> None:
    driver = make_driver()
    finished: list[str] = []

    async def leftover() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            finished.append("leftover")

    async with trio.open_nursery() as nursery:
        await nursery.start(driver.drive)
        driver.loop.create_task(leftover())
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            # Closing a connection happens in a cancelled scope: the loop still runs.
            try:
                with trio.fail_after(5):
                    await driver.run(asyncio.sleep(0.01))
            finally:
                await driver.stop()
    assert finished == ["leftover"]  # stop() cancelled what was still running
    assert driver.loop.is_closed()


@pytest.mark.rabbitmq
async def test_the_connection_lives_in_the_services_thread() -> None:
    """On both backends, no thread is started for the AMQP connection."""
    name = f"driven-{uuid.uuid4().hex[:8]}"
    topology = Topology(
        exchanges=(ExchangeSpec(name, "direct"),),
        queues=(QueueSpec(name, durable=False, auto_delete=False, exclusive=False),),
        bindings=(Binding(name, name, "rk"),),
    )
    before = {thread.ident for thread in threading.enumerate()}
    try:
        async with open_connection(_rabbit.RABBITMQ_URI, ConnectionOptions()) as connection:
            consumer = await connection.consume(name, prefetch=10, topology=topology)
            await connection.publish(Outgoing(name, "rk", b'{"n": 1}', Properties()))
            with anyio.fail_after(10):
                message = await anext(aiter(consumer))
            assert message.body == b'{"n": 1}'
            message.ack()
            new = [
                thread.name
                for thread in threading.enumerate()
                if thread.ident not in before and thread.name.startswith("farine-amqp")
            ]
            assert new == []
            await consumer.aclose()
    finally:
        await _rabbit.delete(queues=[name], exchanges=[name])


async def test_a_failure_to_connect_is_raised_as_is() -> None:
    """Not wrapped in an exception group on trio (the driver runs in a nursery)."""
    options = ConnectionOptions(connect_timeout=1, connect_retry_timeout=0.2)
    with pytest.raises(BrokerUnavailable, match="cannot connect to the AMQP broker"):
        async with open_connection("amqp://guest:guest@127.0.0.1:1/", options):
            pytest.fail("connected to a dead port")


@pytest.mark.rabbitmq
async def test_an_error_in_the_connections_block_is_raised_as_is() -> None:
    boom = ValueError("boom")
    with pytest.raises(ValueError, match="boom") as info:
        async with open_connection(_rabbit.RABBITMQ_URI, ConnectionOptions()):
            raise boom
    assert info.value is boom
    assert info.value.__context__ is None


# -- gathered writes -----------------------------------------------------------------------


class _Transport:
    """Records each write (a `send()` of asyncio's socket transport)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


class _Writer:
    """What `RoundWriter` takes over of a `StreamWriter`."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.closed_after: list[bytes] | None = None

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed_after = list(self.transport.writes)


def _held(driver: TrioDriver) -> tuple[asyncio.StreamWriter, _Transport]:
    writer = _Writer()
    stream = cast("asyncio.StreamWriter", writer)
    RoundWriter(stream, driver.loop)
    return stream, writer.transport


def _new_round(driver: TrioDriver) -> None:
    driver.loop.io_rounds += 1  # as a step that polled for I/O does


ACK = frame.marshal(spec.Basic.Ack(delivery_tag=7), 1)
NACK = frame.marshal(spec.Basic.Nack(delivery_tag=8), 1)
REJECT = frame.marshal(spec.Basic.Reject(delivery_tag=9), 1)
QOS = frame.marshal(spec.Basic.Qos(prefetch_count=5), 1)


@trio_only
async def test_a_lone_write_goes_out_at_once_and_a_rounds_next_ones_together() -> None:
    with trio.fail_after(5):  # a lost flush hangs
        async with driven() as driver:
            writer, transport = _held(driver)
            _new_round(driver)

            async def publish(*frames: bytes) -> list[bytes]:
                for data in frames:
                    writer.write(data)
                return list(transport.writes)  # what went out before the step ended

            assert await driver.run(publish(b"first")) == [b"first"]
            # Later in the same round: held until trio's round is over, then in one write.
            assert await driver.run(publish(b"second", b"third")) == [b"first"]
            await trio.testing.wait_all_tasks_blocked()
            assert transport.writes == [b"first", b"secondthird"]
            # The round's next writes are held too, until the next round.
            sent = list(transport.writes)
            assert await driver.run(publish(b"fourth")) == sent
            await trio.testing.wait_all_tasks_blocked()
            assert transport.writes[-1] == b"fourth"
            _new_round(driver)
            assert (await driver.run(publish(b"fifth", b"sixth")))[-1] == b"fifth"
            await trio.testing.wait_all_tasks_blocked()
            assert transport.writes[-2:] == [b"fifth", b"sixth"]


@trio_only
async def test_a_gathered_write_holds_a_bounded_number_of_bytes() -> None:
    small = b"s" * (MAX_HELD_BYTES // 3 + 1)
    large = b"L" * MAX_HELD_BYTES
    with trio.fail_after(5):  # a lost flush hangs
        async with driven() as driver:
            writer, transport = _held(driver)
            _new_round(driver)

            async def publish(*frames: bytes) -> list[bytes]:
                for data in frames:
                    writer.write(data)
                return list(transport.writes)

            assert await driver.run(publish(b"first")) == [b"first"]
            # Three thirds reach the bound: they go out together at once.
            assert await driver.run(publish(small, small, small)) == [b"first", small * 3]
            # A write that large goes out alone, after what is held.
            assert await driver.run(publish(small, large)) == [b"first", small * 3, small, large]
            assert all(len(data) <= MAX_HELD_BYTES + len(small) for data in transport.writes)


@trio_only
async def test_settling_frames_ride_with_the_next_write_or_go_out_after_the_round() -> None:
    assert len({len(ACK), len(NACK), len(REJECT)}) == 1  # the size `RoundWriter` looks for
    with trio.fail_after(5):  # a lost flush hangs
        async with driven() as driver:
            writer, transport = _held(driver)

            async def write(*frames: bytes) -> list[bytes]:
                for data in frames:
                    writer.write(data)
                return list(transport.writes)

            _new_round(driver)
            # Nobody waits for them: they go with the round's first write.
            assert await driver.run(write(ACK, NACK, b"publish")) == [ACK + NACK + b"publish"]
            sent = list(transport.writes)
            assert await driver.run(write(REJECT, QOS)) == sent  # the round's second write
            await trio.testing.wait_all_tasks_blocked()
            assert transport.writes[-1] == REJECT + QOS
            _new_round(driver)
            sent = list(transport.writes)
            assert await driver.run(write(ACK)) == sent  # held...
            await trio.testing.wait_all_tasks_blocked()
            assert transport.writes[-1] == ACK  # ...and sent alone once trio's round is over


@trio_only
async def test_drain_and_close_send_what_is_held_first() -> None:
    with trio.fail_after(5):  # a lost flush hangs
        async with driven() as driver:
            stream, transport = _held(driver)
            writer = cast("_Writer", stream)

            async def write_then(end: str) -> list[bytes]:
                stream.write(b"a")
                stream.write(b"b")  # same round: held
                if end == "drain":
                    await stream.drain()
                else:
                    stream.close()
                return list(transport.writes)

            _new_round(driver)
            assert await driver.run(write_then("drain")) == [b"a", b"b"]
            _new_round(driver)
            assert await driver.run(write_then("close")) == [b"a", b"b", b"a", b"b"]
            assert writer.closed_after == [b"a", b"b", b"a", b"b"]
