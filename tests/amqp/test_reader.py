"""`FrameReader`: the frames and errors of aiormq's `FrameReceiver` (pamqp's frames), from
bytes however they arrive."""

from __future__ import annotations

import asyncio
import random
import struct
from typing import TYPE_CHECKING, Any

import aiormq.connection
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import base, frame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat
from yarl import URL

from farine._broker.aiormq.calls import to_pamqp
from farine._broker.aiormq.fastpath import reader as _reader
from farine._broker.aiormq.fastpath.reader import FrameReader, use_frame_reader
from farine._broker.aiormq.fastpath.transport import TcpTransportFactory
from tests.amqp import _rabbit
from tests.amqp._engine_loop import on_engine_loop
from tests.amqp.test_frames import BODIES, random_properties

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.anyio, pytest.mark.fastpath]


class Chunks:
    """A `StreamReader` stand-in that gives `data` in the chunks `sizes` cut it into, then
    EOF."""

    def __init__(self, data: bytes, sizes: Iterator[int]) -> None:
        self.data = data
        self.sizes = sizes

    def at_eof(self) -> bool:
        return not self.data

    async def read(self, n: int) -> bytes:
        size = min(n, next(self.sizes))
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def shape(value: Any) -> Any:
    """A frame, or a tuple of them, as comparable data: types and every attribute."""
    if isinstance(value, tuple):
        return tuple(shape(item) for item in value)  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, (base.Frame, base.BasicProperties, ContentHeader, ContentBody, Heartbeat)):
        names = list(getattr(value, "__slots__", ())) or list(vars(value))
        return (type(value).__name__, {name: shape(getattr(value, name)) for name in names})
    return value


def odd_header() -> bytes:
    """A content header pamqp decodes but would not build: a delivery mode of 0."""
    properties = spec.Basic.Properties(content_type="x")
    properties.delivery_mode = 0
    return frame.marshal(ContentHeader(0, 3, properties), 1)


def cluster_header() -> bytes:
    """A content header with the deprecated `cluster_id` set."""
    flags = 0x8000 | 0x0004
    payload = struct.pack(">HHQH", 60, 0, 3, flags) + b"\x01a" + b"\x02cl"
    return struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"


def random_frames(rng: random.Random) -> list[bytes]:
    """Frames as a broker sends them: deliveries with their content, confirms, others."""
    channel = rng.choice([1, 2, 65535])
    text = lambda: rng.choice(["", "a", "amq.ctag-x", "ünïcode ✓", "x" * 255])  # noqa: E731
    frames: list[bytes] = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(["deliver", "ack", "nack", "return", "other", "heartbeat", "odd"])
        if kind in ("deliver", "return"):
            body = rng.choice(BODIES)
            method: Any = (
                spec.Basic.Deliver(text(), rng.choice([1, 2**40]), rng.random() < 0.5, "", text())
                if kind == "deliver"
                else spec.Basic.Return(312, "NO_ROUTE", "", text())
            )
            method.exchange = rng.choice(["", "calc", "a.b-c_d:e@f#g,h/i+j k", "x" * 127])
            properties = random_properties(rng)
            pamqp_props = to_pamqp(properties, properties.message_id)
            parts: list[Any] = [method, ContentHeader(0, len(body), pamqp_props)]
            parts += [ContentBody(body[i : i + 131_064]) for i in range(0, len(body), 131_064)]
            frames += [frame.marshal(part, channel) for part in parts]
        elif kind == "ack":
            ack = spec.Basic.Ack(rng.choice([0, 7, 2**63 - 1]), rng.random() < 0.5)
            frames.append(frame.marshal(ack, channel))
        elif kind == "nack":
            frames.append(frame.marshal(spec.Basic.Nack(5, False, True), channel))
        elif kind == "other":
            other = rng.choice(
                [spec.Channel.OpenOk(), spec.Basic.ConsumeOk("t"), spec.Basic.QosOk()]
            )
            frames.append(frame.marshal(other, channel))
        elif kind == "heartbeat":
            frames.append(frame.marshal(Heartbeat(), 0))
        else:
            frames.append(rng.choice([odd_header, cluster_header])())
    return frames


def cuts(rng: random.Random) -> Iterator[int]:
    """Chunk sizes: single bytes, a frame head's worth, a few frames, whole reads."""
    while True:
        yield rng.choice([1, 3, 7, 8, 50, 1000, 70_000])


async def read_all(reader: Any) -> list[Any]:
    return [value async for value in FrameReader(reader)]


@pytest.mark.parametrize("seed", range(200))
async def test_frames_are_pamqp_s_however_they_arrive(seed: int) -> None:
    rng = random.Random(seed)
    frames = random_frames(rng)
    expected = [shape(frame.unmarshal(data)) for data in frames]
    got = await on_engine_loop(read_all(Chunks(b"".join(frames), cuts(rng))))
    assert [shape(value) for value in got] == expected


def test_deliveries_and_confirms_are_decoded_without_pamqp(monkeypatch: pytest.MonkeyPatch) -> None:
    properties = spec.Basic.Properties(headers={"x-farine-deadline": "1.5"}, correlation_id="c")
    common = [
        frame.marshal(spec.Basic.Deliver("ctag", 1, False, "", "q"), 1),
        frame.marshal(ContentHeader(0, 2, properties), 1),
        frame.marshal(ContentBody(b"{}"), 1),
        frame.marshal(spec.Basic.Ack(1, False), 1),
        frame.marshal(Heartbeat(), 0),
    ]
    rare = [frame.marshal(spec.Basic.QosOk(), 1), odd_header(), cluster_header()]
    expected = [shape(frame.unmarshal(data)) for data in common + rare]
    decoded_by_pamqp: list[bytes] = []
    unmarshal = frame.unmarshal

    def counted(data: bytes) -> Any:
        decoded_by_pamqp.append(data)
        return unmarshal(data)

    monkeypatch.setattr(frame, "unmarshal", counted)
    data = b"".join(common + rare)
    got = [_reader.decode_frame(data, start) for start in starts(data)]
    assert [shape(value) for value in got] == expected
    assert decoded_by_pamqp == rare


def starts(data: bytes) -> list[int]:
    """Where each frame of `data` starts."""
    offsets: list[int] = []
    offset = 0
    while offset < len(data):
        offsets.append(offset)
        offset += 8 + struct.unpack_from(">I", data, offset + 3)[0]
    return offsets


DELIVER = frame.marshal(spec.Basic.Deliver("ctag", 1, False, "", "q"), 1)
ACK = frame.marshal(spec.Basic.Ack(1, False), 1)
BAD_UTF8 = DELIVER.replace(b"\x04ctag", b"\x04ct\xffg")
UNKNOWN_METHOD = struct.pack(">BHII", 1, 1, 4, 0x990099) + b"\xce"
# A content header whose flags announce a content type it does not hold.
SHORT_HEADER = struct.pack(">BHIHHQH", 2, 1, 14, 60, 0, 0, 0x8000) + b"\xce"
# A delivery without the end of its routing key.
SHORT_DELIVER = struct.pack(">BHI", 1, 1, len(DELIVER) - 10) + DELIVER[7:-3] + b"\xce"


async def outcome(receiver: Any, data: bytes, error: OSError | None) -> tuple[list[Any], Any]:
    """The frames read from `data` by `receiver`, and what ended the reading."""
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    if error is None:
        stream.feed_eof()
    else:
        stream.set_exception(error)
    frames: list[Any] = []
    try:
        async for value in receiver(stream):
            frames.append(shape(value))  # noqa: PERF401 (kept when an error follows)
    except Exception as e:
        return frames, type(e)
    return frames, None


@pytest.mark.parametrize(
    ("data", "error", "expected"),
    [
        pytest.param(ACK + DELIVER[:-1] + b"\x00", None, InvalidFrameError, id="frame-end"),
        pytest.param(UNKNOWN_METHOD, None, InvalidFrameError, id="method"),
        pytest.param(BAD_UTF8, None, InvalidFrameError, id="utf-8"),
        pytest.param(SHORT_HEADER + ACK * 30, None, InvalidFrameError, id="short-header"),
        pytest.param(SHORT_DELIVER + ACK * 30, None, InvalidFrameError, id="short-method"),
        pytest.param(ACK + DELIVER[:9], None, AMQPConnectionError, id="cut-off"),
        pytest.param(ACK[:3], None, AMQPConnectionError, id="cut-off-head"),
        pytest.param(b"AMQP\x00\x00\x09\x01", None, ProtocolSyntaxError, id="protocol-header"),
        pytest.param(ACK, ConnectionResetError(104, "reset"), AMQPConnectionError, id="reset"),
        pytest.param(b"", OSError(5, "I/O"), AMQPConnectionError, id="os-error"),
        pytest.param(ACK + DELIVER, None, None, id="eof"),
    ],
)  # fmt: skip
async def test_the_errors_are_aiormq_s(data: bytes, error: OSError | None, expected: Any) -> None:
    ours = await on_engine_loop(outcome(FrameReader, data, error))
    theirs = await on_engine_loop(outcome(aiormq.connection.FrameReceiver, data, error))
    assert ours == theirs
    assert ours[1] is expected


async def test_farine_s_readers_only_are_read_leanly() -> None:
    async def receivers() -> tuple[object, object]:
        ours, theirs = asyncio.StreamReader(), asyncio.StreamReader()
        assert _reader.install()
        use_frame_reader(ours)
        return aiormq.connection.FrameReceiver(ours), aiormq.connection.FrameReceiver(theirs)

    ours, theirs = await on_engine_loop(receivers())
    assert type(ours) is FrameReader
    assert isinstance(theirs, _reader._aiormq_receiver)  # pyright: ignore[reportPrivateUsage]
    assert not isinstance(theirs, FrameReader)


def test_a_replaced_receiver_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class Other(_reader._aiormq_receiver):  # pyright: ignore[reportPrivateUsage]
        pass

    monkeypatch.setattr(aiormq.connection, "FrameReceiver", Other)
    assert not _reader.install()
    assert aiormq.connection.FrameReceiver is Other


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        pytest.param(1, struct.pack(">IB", 0x003C003C, 0), id="deliver"),  # a consumer tag only
        pytest.param(1, struct.pack(">IQ", 0x003C0050, 1), id="ack"),  # no bits
        pytest.param(2, struct.pack(">HHQH", 60, 0, 0, 0x8000), id="header"),  # no content type
    ],
)
def test_a_frame_is_not_read_past_its_end(kind: int, payload: bytes) -> None:
    """Cut short, each frame would read on into what follows it: pamqp decides."""
    data = struct.pack(">BHI", kind, 1, len(payload)) + payload + b"\xce" + bytes(300)
    with pytest.raises(InvalidFrameError):
        _reader.decode_frame(data, 0)


async def test_a_cancelled_read_loses_nothing() -> None:
    class Stalling:
        """Gives the first bytes of a frame in two reads, then stalls until cancelled,
        then the rest."""

        def __init__(self) -> None:
            # Less than a frame head, then a head and less than the frame, then a stall.
            self.parts = [ACK[:3], ACK[3:9], None, ACK[9:]]
            self.stalled = asyncio.Event()

        def at_eof(self) -> bool:
            return False

        async def read(self, n: int) -> bytes:
            part = self.parts.pop(0)
            if part is None:
                self.stalled.set()
                await asyncio.Event().wait()
            assert part is not None
            return part

    async def scenario() -> Any:
        stream = Stalling()
        reader = FrameReader(stream)  # pyright: ignore[reportArgumentType]
        first = asyncio.ensure_future(reader.get_frame())
        await stream.stalled.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await reader.get_frame()

    assert shape(await on_engine_loop(scenario())) == shape(frame.unmarshal(ACK))


@pytest.mark.rabbitmq
async def test_farine_s_connections_are_read_leanly() -> None:
    async def receiver() -> object:
        reader, writer = await TcpTransportFactory().create(URL(_rabbit.RABBITMQ_URI))
        try:
            return aiormq.connection.FrameReceiver(reader)
        finally:
            writer.close()
            await writer.wait_closed()

    assert type(await on_engine_loop(receiver())) is FrameReader
