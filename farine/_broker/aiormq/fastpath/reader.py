"""Reading the AMQP frames of farine's own connections with `FrameReader`.

`FrameReader` reads the socket's bytes as they come (one `read()` for all the frames
that arrived together) and cuts frames out of them with no await. It decodes the
frames an RPC call or a consumer receives most (`basic.deliver`, `basic.ack`, content
headers and bodies, heartbeats) in one pass; any other frame, and any one it finds
anything unusual in, goes to pamqp, which then decodes it or raises its own error. The
frames are the objects pamqp builds, and the errors are those aiormq's receiver raises.

aiormq builds its receiver in `Connection.connect()` from the module global
`aiormq.connection.FrameReceiver`. `install()` puts a subclass in its place that builds
a `FrameReader` for the readers registered with `use_frame_reader()`, and aiormq's own
receiver for any other: other aiormq connections in the process are left as they are.
"""

from __future__ import annotations

import logging
import struct
import weakref
from typing import TYPE_CHECKING, Any, Final

import aiormq.connection
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import commands as spec
from pamqp import decode
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = ("READ_SIZE", "FrameReader", "install", "use_frame_reader")

logger = logging.getLogger("farine.amqp")

#: The most bytes one read takes from the connection's `StreamReader`.
READ_SIZE: Final = 64 * 1024

_HEAD: Final = struct.Struct(">BHI")  # frame type, channel, payload size
_HEAD_SIZE: Final = _HEAD.size
_FRAME_END: Final = 0xCE
_LONG: Final = struct.Struct(">I")  # a method (its class and method, as pamqp indexes them), a size
_TAG_BITS: Final = struct.Struct(">QB")  # a delivery tag and a byte of bits
_CONTENT: Final = struct.Struct(">HHQH")  # class, weight, body size, property flags

_DELIVER: Final = spec.Basic.Deliver.index
_ACK: Final = spec.Basic.Ack.index

_new: Final = object.__new__
_Deliver: Final = spec.Basic.Deliver
_Ack: Final = spec.Basic.Ack
_Properties: Final = spec.Basic.Properties


def _short(data: bytes, offset: int) -> tuple[str, int]:
    """The short string at `offset`, and the offset after it."""
    end = offset + 1 + data[offset]
    return data[offset + 1 : end].decode(), end


def _method(data: bytes, start: int, stop: int) -> Any:
    """The `basic.deliver` or `basic.ack` in `data[start:stop]`, or None for any other
    method, or one with anything unusual."""
    (index,) = _LONG.unpack_from(data, start)
    if index == _DELIVER:
        consumer_tag, offset = _short(data, start + 4)
        delivery_tag, bits = _TAG_BITS.unpack_from(data, offset)
        exchange, offset = _short(data, offset + 9)
        routing_key, offset = _short(data, offset)
        if offset != stop:
            return None
        deliver = _new(_Deliver)
        deliver.consumer_tag = consumer_tag
        deliver.delivery_tag = delivery_tag
        deliver.redelivered = bool(bits & 1)
        deliver.exchange = exchange
        deliver.routing_key = routing_key
        return deliver
    if index == _ACK and stop - start == 13:
        delivery_tag, bits = _TAG_BITS.unpack_from(data, start + 4)
        ack = _new(_Ack)
        ack.delivery_tag = delivery_tag
        ack.multiple = bool(bits & 1)
        return ack
    return None


# The properties a content header may hold, in their order there and in the signature
# of `Basic.Properties`: each one's flag and its type (the deprecated `cluster_id`,
# which pamqp refuses to build, is left to pamqp).
_SHORT, _OCTET, _TABLE, _TIMESTAMP = range(4)
_PROPERTIES: Final = (
    (0x8000, _SHORT),  # content_type
    (0x4000, _SHORT),  # content_encoding
    (0x2000, _TABLE),  # headers
    (0x1000, _OCTET),  # delivery_mode
    (0x0800, _OCTET),  # priority
    (0x0400, _SHORT),  # correlation_id
    (0x0200, _SHORT),  # reply_to
    (0x0100, _SHORT),  # expiration
    (0x0080, _SHORT),  # message_id
    (0x0040, _TIMESTAMP),  # timestamp
    (0x0020, _SHORT),  # message_type
    (0x0010, _SHORT),  # user_id
    (0x0008, _SHORT),  # app_id
)


def _header(data: bytes, start: int, stop: int) -> ContentHeader | None:
    """The content header in `data[start:stop]`, or None when it has more than one word
    of property flags or anything unusual."""
    class_id, weight, body_size, flags = _CONTENT.unpack_from(data, start)
    if flags & 0x0007:  # cluster_id (refused when set), more flags, or a reserved bit
        return None
    offset = start + _CONTENT.size
    values: list[Any] = []
    for flag, kind in _PROPERTIES:
        value: Any = None
        if flags & flag:
            if kind == _SHORT:
                value, offset = _short(data, offset)
            elif kind == _OCTET:
                value = data[offset]
                offset += 1
            elif kind == _TABLE:
                end = offset + 4 + _LONG.unpack_from(data, offset)[0]
                value = decode.field_table(data[offset:end])[1]
                offset = end
            else:
                value = decode.timestamp(data[offset : offset + 8])[1]
                offset += 8
        values.append(value)
    if offset > stop:
        return None
    header = ContentHeader(weight, body_size, _Properties(*values))
    header.class_id = class_id  # pyright: ignore[reportAttributeAccessIssue]
    return header


def decode_frame(data: bytes, start: int) -> tuple[int, int, Any]:
    """The frame that starts at `data[start]` and ends in `data`: its size, channel and
    frame, as pamqp's `frame.unmarshal()` gives them (its errors too)."""
    kind, channel, size = _HEAD.unpack_from(data, start)
    begin = start + _HEAD_SIZE
    stop = begin + size
    frame: Any = None
    if data[stop] == _FRAME_END:
        try:
            if kind == 1:
                frame = _method(data, begin, stop)
            elif kind == 2:
                frame = _header(data, begin, stop)
            elif kind == 3:
                frame = ContentBody(data[begin:stop])
            elif kind == 8 and size == 0:
                frame = Heartbeat()
        except (struct.error, ValueError, IndexError):
            frame = None  # pamqp decides
    if frame is None:
        try:
            return pamqp_frame.unmarshal(data[start : stop + 1])
        except PAMQPException as e:
            raise InvalidFrameError(str(e)) from e
    return size + _HEAD_SIZE + 1, channel, frame


class FrameReader:
    """Reads the frames of one AMQP connection, as aiormq's `FrameReceiver` does."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self._data = b""
        self._offset = 0
        # Chunks read after `_data`, joined to it once the frame they complete is whole:
        # a frame larger than a read is copied once, not once per read.
        self._parts: list[bytes] = []
        self._pending = 0  # their size
        self._started = False

    def __aiter__(self) -> FrameReader:
        return self

    async def get_frame(self) -> tuple[int, int, Any]:
        """The next frame: its size, channel and frame."""
        data = self._data
        start = self._offset
        if len(data) - start > _HEAD_SIZE:
            end = start + _HEAD_SIZE + _HEAD.unpack_from(data, start)[2] + 1
            if end <= len(data):
                self._offset = end
                return decode_frame(data, start)
        return await self._wait_frame()

    __anext__ = get_frame

    async def _wait_frame(self) -> tuple[int, int, Any]:
        """Read until a whole frame is buffered; decode it."""
        if self._offset == len(self._data) and not self._parts and self.reader.at_eof():
            raise StopAsyncIteration
        if self._offset:
            self._data = self._data[self._offset :]
            self._offset = 0
        end = 0
        while True:
            data = self._data
            if len(data) < _HEAD_SIZE and self._parts:
                data = self._join()
            buffered = len(data) + self._pending
            if len(data) >= _HEAD_SIZE:
                if not self._started and data.startswith(b"AMQP"):
                    raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                end = _HEAD_SIZE + _HEAD.unpack_from(data)[2] + 1
                if end <= buffered:
                    break
            try:
                chunk = await self.reader.read(max(READ_SIZE, end - buffered))
            except OSError as e:
                raise AMQPConnectionError(_read_error(e)) from e
            if not chunk:
                expected = max(end, _HEAD_SIZE) - buffered
                raise AMQPConnectionError(
                    "Server connection unexpectedly closed. "
                    f"Read {buffered} bytes but {expected} bytes expected"
                )
            # Kept at once: a cancelled read loses nothing.
            self._parts.append(chunk)
            self._pending += len(chunk)
        if self._parts:
            data = self._join()
        self._started = True
        self._offset = end
        return decode_frame(data, 0)

    def _join(self) -> bytes:
        """Join the chunks read to the data buffered: the data, whole."""
        parts = self._parts
        data = self._data = (
            parts.pop() if not self._data and len(parts) == 1 else b"".join((self._data, *parts))
        )
        parts.clear()
        self._pending = 0
        return data


def _read_error(e: OSError) -> str:
    """aiormq's words for a failed read."""
    if isinstance(e, ConnectionRefusedError):
        return f"Server connection refused: {e!r}"
    if isinstance(e, ConnectionResetError):
        return f"Server connection reset: {e!r}"
    if isinstance(e, ConnectionError):
        return f"Server connection error: {e!r}"
    return f"Server communication error: {e!r}"


#: The readers of farine's connections (registered by `use_frame_reader()`).
_lean_readers: weakref.WeakSet[asyncio.StreamReader] = weakref.WeakSet()


def use_frame_reader(reader: asyncio.StreamReader) -> None:
    """Have `reader`'s frames read by a `FrameReader` (once `install()` has run)."""
    _lean_readers.add(reader)


_aiormq_receiver: Final = aiormq.connection.FrameReceiver


class _Receiver(_aiormq_receiver):
    """What aiormq's `Connection.connect()` builds in place of its `FrameReceiver`."""

    def __new__(cls, reader: asyncio.StreamReader) -> Any:
        if reader in _lean_readers:
            return FrameReader(reader)
        return super().__new__(cls)


def install() -> bool:
    """Have aiormq build a `FrameReader` for the readers `use_frame_reader()` registered.

    Returns False, leaving aiormq as it is, when its `FrameReceiver` is not the one
    farine knows (another library replaced it).
    """
    current: Callable[..., object] = aiormq.connection.FrameReceiver
    if current is _Receiver:
        return True
    if current is not _aiormq_receiver:
        logger.debug("aiormq's FrameReceiver was replaced: frames are read its way")
        return False
    aiormq.connection.FrameReceiver = _Receiver
    return True
