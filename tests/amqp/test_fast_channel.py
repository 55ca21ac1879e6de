"""The fast path's publish and delivery paths (`internals`), and aiormq's own ways they
fall back to."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.abc
import anyio
import pytest
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

import farine.amqp
import farine.rpc
from farine._broker.aiormq.fastpath import channel as internals
from farine._broker.interface import Outgoing
from farine._connections import get_connection
from farine.amqp import AsyncPublisher, Message, Properties, PublishError, UnroutableError
from tests.amqp._engine_loop import on_engine_loop
from tests.amqp._rabbit import RABBITMQ_URI
from tests.amqp.conftest import Broker, LogWatcher, Recorder, running
from tests.amqp.test_rpc import serve, unique

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [pytest.mark.anyio, pytest.mark.fastpath]

#: Larger than RabbitMQ's default frame size (128 KiB): the body goes in several frames.
BIG = 300 * 1024


@pytest.fixture(params=["farine's own", "aiormq's own"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways: farine's own paths, and (as with an aiormq lacking what they use) aiormq's."""
    if request.param != "farine's own":
        monkeypatch.setattr(
            internals, "PUBLISH_ATTRIBUTES", (*internals.PUBLISH_ATTRIBUTES, "_gone")
        )
        monkeypatch.setattr(
            internals, "DELIVER_ATTRIBUTES", (*internals.DELIVER_ATTRIBUTES, "_gone")
        )
        monkeypatch.setattr(internals, "SETTLE_ATTRIBUTES", (*internals.SETTLE_ATTRIBUTES, "_gone"))
        monkeypatch.setattr(internals, "READ_ATTRIBUTES", (*internals.READ_ATTRIBUTES, "_gone"))
    monkeypatch.setattr(internals, "_supported", {})
    return str(request.param)


async def test_the_installed_aiormq_has_what_the_fast_path_uses(rabbitmq: Broker) -> None:
    async def check() -> tuple[bool, ...]:
        connection = await aiormq.connect(RABBITMQ_URI)  # pyright: ignore[reportUnknownMemberType]
        try:
            channel = await connection.channel()
            return (
                internals.supports(channel, internals.PUBLISH_ATTRIBUTES),
                internals.supports(channel, internals.DELIVER_ATTRIBUTES),
                internals.supports(channel, internals.SETTLE_ATTRIBUTES),
                internals.supports(channel, internals.READ_ATTRIBUTES),
            )
        finally:
            await connection.close()

    with anyio.fail_after(15):
        assert await on_engine_loop(check()) == (True, True, True, True)


async def test_concurrent_publishes_each_get_their_own_confirm_or_return(
    broker: Broker, path: str, watch_log: Callable[..., LogWatcher]
) -> None:
    """Routable and unroutable publishes interleaved, more than the writer's queue holds
    (so some go through aiormq's own way on the same channel), and one body bigger than a
    frame: each publish gets its own outcome, and the consumer gets exactly the others."""
    exchange, queue = broker.exchange(), broker.queue()
    fallback = watch_log("publishes take its way")
    seen = Recorder()

    class Sink:
        @farine.amqp.consume(exchange=exchange, routing_key="in", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add((body["n"], len(body["pad"])))

    async with running(Sink, config=broker.config()) as runtime:
        settings = broker.settings(runtime)
        routed = AsyncPublisher(exchange, "in", settings=settings)
        lost = AsyncPublisher(exchange, "nowhere", settings=settings)
        outcomes: dict[int, str] = {}

        async def send(n: int) -> None:
            pad = "x" * (BIG if n == 7 else 10)
            try:
                await (lost if n % 3 == 0 else routed)({"n": n, "pad": pad})
            except UnroutableError:
                outcomes[n] = "returned"
            else:
                outcomes[n] = "confirmed"

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(60):
                    tg.start_soon(send, n)
            expected = [n for n in range(60) if n % 3]
            received = await seen.wait_for(len(expected))
    assert outcomes == {n: "returned" if n % 3 == 0 else "confirmed" for n in range(60)}
    assert sorted(received) == [(n, BIG if n == 7 else 10) for n in expected]
    if not broker.is_memory:
        assert bool(fallback.records) == (path != "farine's own")


@pytest.mark.parametrize("first", [True, False], ids=["first publish", "channel open"])
async def test_a_publish_to_a_missing_exchange_fails_and_the_next_one_goes_through(
    broker: Broker, path: str, first: bool
) -> None:
    """The broker closes the publishing channel (404): the publish fails with the reason,
    and the next one opens a new channel. The failing publish is the connection's first
    (it opens the channel), or one on a channel already open (on trio, the way with no
    task)."""
    exchange, queue = broker.exchange(), broker.queue()
    seen = Recorder()

    class Sink:
        @farine.amqp.consume(exchange=exchange, routing_key="in", queue=queue)
        async def handle(self, body: Any, message: Message) -> None:
            seen.add(body)

    async with running(Sink, config=broker.config()) as runtime:
        connection = await get_connection(broker.settings(runtime))
        with anyio.fail_after(15):
            if not first:
                await connection.publish(Outgoing(exchange, "in", b'{"n": 0}', Properties()))
            with pytest.raises(PublishError, match=r"no exchange|NOT_FOUND"):
                await connection.publish(
                    Outgoing(broker.exchange("missing"), "in", b"{}", Properties())
                )
            await connection.publish(Outgoing(exchange, "in", b'{"n": 1}', Properties()))
            expected = [{"n": 1}] if first else [{"n": 0}, {"n": 1}]
            assert await seen.wait_for(len(expected)) == expected


async def test_acks_nacks_and_rejects_either_way(
    broker: Broker, path: str, watch_log: Callable[..., LogWatcher]
) -> None:
    """Nacked messages come back, rejected ones are dead-lettered, acked ones are done:
    a second consumer of the queue, started once they all were settled, gets nothing
    but a marker published last."""
    exchange, dead_exchange = broker.exchange(), broker.exchange("dlx")
    queue = broker.queue()
    fallback = watch_log("settles take its way")
    seen, dead = Recorder(), Recorder()
    arguments = {"x-dead-letter-exchange": dead_exchange}

    class Manual:
        @farine.amqp.consume(
            exchange=exchange,
            routing_key="rk",
            queue=queue,
            queue_arguments=arguments,
            auto_delete=False,  # the queue outlives this consumer, to be looked at after
            prefetch=20,
        )
        async def handle(self, body: Any, message: Message) -> None:
            n = body["n"]
            seen.add((n, message.redelivered))
            if n % 3 == 1 and not message.redelivered:
                message.nack(requeue=True)
            elif n % 3 == 2:
                message.reject()
            else:
                message.ack()

        @farine.amqp.consume(exchange=dead_exchange, routing_key="rk", queue=broker.queue("dead"))
        async def dead_letters(self, body: Any, message: Message) -> None:
            dead.add(body["n"])

    async with running(Manual, config=broker.config()) as runtime:
        publish = AsyncPublisher(exchange, "rk", settings=broker.settings(runtime))
        with anyio.fail_after(30):
            for n in range(30):
                await publish({"n": n})
            received = await seen.wait_for(40)  # 10 of them twice
            rejected = await dead.wait_for(10)
    assert sorted(received) == sorted(
        [(n, False) for n in range(30)] + [(n, True) for n in range(30) if n % 3 == 1]
    )
    assert sorted(rejected) == [n for n in range(30) if n % 3 == 2]
    leftover = Recorder()

    class Later:
        @farine.amqp.consume(
            exchange=exchange, routing_key="rk", queue=queue, queue_arguments=arguments,
            auto_delete=False,
        )  # fmt: skip
        async def handle(self, body: Any, message: Message) -> None:
            leftover.add(body["n"])

    async with running(Later, config=broker.config()) as runtime:
        await AsyncPublisher(exchange, "rk", settings=broker.settings(runtime))({"n": "end"})
        with anyio.fail_after(15):
            assert await leftover.wait_for(1) == ["end"]
    if not broker.is_memory:
        assert bool(fallback.records) == (path != "farine's own")


class Echo:
    @farine.rpc.method()
    async def echo(self, text: str) -> str:
        return text * 2


async def test_rpc_calls_and_replies_either_way(broker: Broker, path: str) -> None:
    svc = unique(Echo, broker)
    async with serve(svc, broker=broker), farine.rpc.Client(svc.__name__, timeout=10) as rpc:
        with anyio.fail_after(15):
            results = [await rpc.echo(str(n)) for n in range(5)]
    assert results == ["00", "11", "22", "33", "44"]


async def test_a_hand_over_that_fails_is_logged_and_the_channel_goes_on(
    rabbitmq: Broker, watch_log: Callable[..., LogWatcher]
) -> None:
    queue = rabbitmq.queue()
    failed = watch_log("could not be handed over")

    async def exercise() -> list[bytes]:
        connection = await aiormq.connect(RABBITMQ_URI)  # pyright: ignore[reportUnknownMemberType]
        try:
            channel = await connection.channel()
            await channel.queue_declare(queue, auto_delete=True)
            got: list[bytes] = []
            second = asyncio.Event()

            def on_message(message: aiormq.abc.DeliveredMessage) -> None:
                if message.body == b"first":
                    raise RuntimeError("boom")
                got.append(message.body)
                second.set()

            callback = internals.deliver(channel, on_message)
            await channel.basic_consume(queue, callback, no_ack=True)
            for body in (b"first", b"second"):
                await channel.basic_publish(body, routing_key=queue)
            await second.wait()
            assert not channel.is_closed
            return got
        finally:
            await connection.close()

    with anyio.fail_after(15):
        assert await on_engine_loop(exercise()) == [b"second"]
    assert failed.records
    assert failed.records[0].exc_info is not None
    assert str(failed.records[0].exc_info[1]) == "boom"


def test_frames_are_written_at_once_only_when_nothing_waits_before_them() -> None:
    class Writer:
        def __init__(self) -> None:
            self.written: list[bytes] = []
            self.closing = False

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def is_closing(self) -> bool:
            return self.closing

    class Connection:
        pass

    def frame(payload: bytes) -> ChannelFrame:
        return ChannelFrame(payload=payload, should_close=False)

    def queued() -> list[bytes]:
        payloads: list[bytes] = []
        while not queue.empty():
            payloads.append(queue.get_nowait().payload)
        return payloads

    ours, other, writer = Connection(), Connection(), Writer()
    queue: asyncio.Queue[ChannelFrame] = asyncio.Queue()
    internals.register_writer(ours, writer)  # pyright: ignore[reportArgumentType]
    internals._write(ours, queue, frame(b"1"))  # pyright: ignore[reportPrivateUsage]
    assert (writer.written, queued()) == ([b"1"], [])
    queue.put_nowait(frame(b"2"))  # the writer task has yet to take it
    internals._write(ours, queue, frame(b"3"))  # pyright: ignore[reportPrivateUsage]
    assert (writer.written, queued()) == ([b"1"], [b"2", b"3"])
    writer.closing = True
    internals._write(ours, queue, frame(b"4"))  # pyright: ignore[reportPrivateUsage]
    internals._write(other, queue, frame(b"5"))  # pyright: ignore[reportPrivateUsage]
    assert (writer.written, queued()) == ([b"1"], [b"4", b"5"])


async def test_farine_s_connections_write_their_frames_themselves(rabbitmq: Broker) -> None:
    async with running(Echo, config=rabbitmq.config()) as runtime:
        connection: Any = await get_connection(rabbitmq.settings(runtime))
        engine = connection._engine  # the aiormq side, on both backends
        assert engine.connection in internals._writers  # pyright: ignore[reportPrivateUsage]


class ReadChannel:
    """What `internals.take_channel_frames()` uses of an aiormq channel."""

    number = 3

    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.consumers: dict[str, object] = {"ctag": object()}
        self.confirmations: dict[int, object] = {}
        self.publisher_confirms = True
        self.is_closed = False
        self.confirmed: list[int] = []

    def _confirm_delivery(self, tag: int, frame: spec.Basic.Ack) -> None:
        del self.confirmations[tag]
        self.confirmed.append(tag)

    def queued(self) -> list[Any]:
        """The frames left for the channel's reader, taken out."""
        frames: list[Any] = []
        while not self.frames.empty():
            frames.append(self.frames.get_nowait()[1])
        return frames


def delivery(tag: int, body: bytes, consumer: str = "ctag") -> list[Any]:
    """A delivery's frames, its body 4 bytes a frame."""
    deliver = spec.Basic.Deliver(consumer, tag, False, "", "q")
    header = ContentHeader(0, len(body), spec.Basic.Properties(correlation_id=str(tag)))
    return [deliver, header, *(ContentBody(body[i : i + 4]) for i in range(0, len(body), 4))]


async def read(channel: ReadChannel, frames: list[Any]) -> list[tuple[int, bytes]]:
    """Put `frames` as the connection's reader does; the (tag, body) of each delivery
    handed over inline."""
    got: list[tuple[int, bytes]] = []

    def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        assert message.channel is channel
        assert message.header.properties.correlation_id == str(message.delivery_tag)
        if message.body == b"boom":
            raise RuntimeError("boom")
        got.append((message.delivery_tag or 0, message.body))

    internals.take_channel_frames(channel, on_message)  # pyright: ignore[reportArgumentType]
    for frame in frames:
        await channel.frames.put((0, frame))
    return got


async def test_deliveries_and_confirms_skip_the_channel_s_queue_while_it_is_empty() -> None:
    channel = ReadChannel()
    channel.confirmations.update(dict.fromkeys([1, 2, 3, 5, 6]))
    frames = [
        *delivery(1, b"0123456789"),  # three body frames
        spec.Basic.Ack(2, multiple=True),
        *delivery(2, b""),  # no body frame
        spec.Basic.Ack(5),
        *delivery(3, b"abcd"),
        *delivery(4, b"gone", consumer="cancelled"),  # dropped, as aiormq does
    ]
    assert await on_engine_loop(read(channel, frames)) == [
        (1, b"0123456789"),
        (2, b""),
        (3, b"abcd"),
    ]
    assert channel.confirmed == [1, 2, 5]
    assert channel.queued() == []


async def test_frames_queue_behind_those_the_channel_s_reader_has_yet_to_take() -> None:
    channel = ReadChannel()
    channel.confirmations[1] = None
    first = spec.Basic.QosOk()  # for the reader (an RPC reply)
    frames = [first, *delivery(7, b"xyz"), spec.Basic.Ack(1)]
    assert await on_engine_loop(read(channel, frames)) == []
    assert channel.queued() == frames
    assert channel.confirmed == []


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([spec.Basic.Ack(9)], id="unknown-tag"),  # the reader logs it
        pytest.param([spec.Basic.Nack(1)], id="nack"),
        pytest.param([spec.Basic.Deliver("ctag", 1), spec.Basic.Cancel("ctag")], id="no-header"),
        pytest.param([*delivery(1, b"0123456789")[:3], spec.Basic.Cancel("ctag")], id="cut-short"),
    ],
)
async def test_what_the_channel_s_reader_must_see_goes_to_it_in_order(frames: list[Any]) -> None:
    channel = ReadChannel()
    channel.confirmations[1] = None
    assert await on_engine_loop(read(channel, frames)) == []
    assert channel.queued() == frames
    assert channel.confirmed == []


async def test_a_closed_channel_s_frames_are_left_in_its_queue() -> None:
    channel = ReadChannel()
    channel.is_closed = True
    frames = delivery(1, b"late")
    assert await on_engine_loop(read(channel, frames)) == []
    assert channel.queued() == frames


async def test_a_failed_hand_over_is_logged_and_the_next_delivery_goes_through(
    watch_log: Callable[..., LogWatcher],
) -> None:
    failed = watch_log("could not be handed over")
    channel = ReadChannel()
    frames = [*delivery(1, b"boom"), *delivery(2, b"fine")]
    assert await on_engine_loop(read(channel, frames)) == [(2, b"fine")]
    assert len(failed.records) == 1


async def test_an_empty_body_frame_ends_the_body_as_aiormq_reads_it() -> None:
    channel = ReadChannel()
    frames = [*delivery(1, b"0123456789")[:3], ContentBody(b""), *delivery(2, b"next")]
    assert await on_engine_loop(read(channel, frames)) == [(1, b"0123"), (2, b"next")]
