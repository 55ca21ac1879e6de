"""The frames of a `basic.publish`, encoded in one pass, and those that settle deliveries.

`publish_frames()` writes the bytes pamqp would write for a publish (method, content
header, body frames), directly from farine's properties. It returns None for what it
does not encode the same way (a string longer than AMQP's short strings, an exchange
name or a delivery mode pamqp refuses): pamqp then encodes it, or raises its own error.
The headers table and the timestamp are encoded by pamqp's own functions.

`settle_frame()` encodes a `basic.ack`, `basic.nack` or `basic.reject`.

The test suite compares their output with pamqp's, byte for byte.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from pamqp import constants, encode

if TYPE_CHECKING:
    from farine._broker.message import Outcome, PropertiesLike

__all__ = ("publish_frames", "settle_frame")

_FRAME_HEAD: Final = struct.Struct(">BHI")  # type, channel, payload size
_FRAME_END: Final = constants.FRAME_END_CHAR
# Method frame payload up to the exchange: class 60 (basic), method 40 (publish), ticket 0.
_PUBLISH: Final = struct.pack(">HHH", 60, 40, 0)
_HEADER: Final = struct.Struct(">HHQH")  # class 60, weight 0, body size, property flags
_OCTET: Final = struct.Struct(">B")
_EXCHANGE_NAME: Final = constants.DOMAIN_REGEX["exchange-name"]
# A settle frame whole: the frame head (method, channel, payload size 13), class 60
# (basic), the method, the delivery tag, the bits, the frame end.
_SETTLE: Final = struct.Struct(">BHIHHQBB")
_SETTLE_METHODS: Final[dict[str, int]] = {"ack": 80, "reject": 90, "nack": 120}

#: Exchange names checked once as pamqp checks them (valid ones only, a bounded number:
#: others are checked at each publish).
_valid_exchanges: set[str] = set()
_MAX_VALID_EXCHANGES: Final = 1024


def _short(value: str) -> bytes | None:
    data = value.encode()
    if len(data) > 255:
        return None
    return _OCTET.pack(len(data)) + data


def _shorts(fields: tuple[tuple[int, str | None], ...], parts: list[bytes]) -> int | None:
    """Append the short-string properties that are set (pamqp leaves out None and ""
    alike); return their flags, or None if one is too long."""
    flags = 0
    for flag, value in fields:
        if value is not None and value != "":
            encoded = _short(value)
            if encoded is None:
                return None
            flags |= flag
            parts.append(encoded)
    return flags


def publish_frames(
    channel: int,
    max_content_size: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: PropertiesLike,
    message_id: str,
    body: bytes,
) -> bytes | None:
    """The frames of a publish on `channel`, as pamqp marshals them; None when pamqp
    must do it (see the module docstring).

    `message_id` replaces the properties' own. Bodies larger than `max_content_size` are
    split over several body frames.
    """
    if exchange not in _valid_exchanges:
        if len(exchange) > 127 or not _EXCHANGE_NAME.fullmatch(exchange):
            return None
        if len(_valid_exchanges) < _MAX_VALID_EXCHANGES:
            _valid_exchanges.add(exchange)
    exchange_bytes = _short(exchange)
    key = _short(routing_key)
    if exchange_bytes is None or key is None:
        return None
    method = b"".join((_PUBLISH, exchange_bytes, key, b"\x01" if mandatory else b"\x00"))

    # Properties in their flag order.
    parts: list[bytes] = []
    types = ((0x8000, properties.content_type), (0x4000, properties.content_encoding))
    flags = _shorts(types, parts)
    if flags is None:
        return None
    headers = properties.headers
    if headers is not None:
        flags |= 0x2000
        parts.append(encode.field_table(headers))  # pyright: ignore[reportArgumentType]
    delivery_mode = properties.delivery_mode
    if delivery_mode is not None:
        if delivery_mode != 1 and delivery_mode != 2:  # pamqp refuses others
            return None
        flags |= 0x1000
        parts.append(b"\x01" if delivery_mode == 1 else b"\x02")
    priority = properties.priority
    if priority is not None:
        flags |= 0x0800
        parts.append(encode.octet(priority))
    ids = _shorts(
        (
            (0x0400, properties.correlation_id),
            (0x0200, properties.reply_to),
            (0x0100, properties.expiration),
            (0x0080, message_id),
        ),
        parts,
    )
    if ids is None:
        return None
    flags |= ids
    timestamp = properties.timestamp
    if timestamp is not None:
        flags |= 0x0040
        parts.append(encode.timestamp(timestamp))
    # cluster_id (0x0004, deprecated) is not sent, as by `to_pamqp()`.
    names = _shorts(
        (
            (0x0020, properties.message_type),
            (0x0010, properties.user_id),
            (0x0008, properties.app_id),
        ),
        parts,
    )
    if names is None:
        return None
    flags |= names
    header = _HEADER.pack(60, 0, len(body), flags) + b"".join(parts)

    frames: list[bytes | memoryview] = [
        _FRAME_HEAD.pack(constants.FRAME_METHOD, channel, len(method)),
        method,
        _FRAME_END,
        _FRAME_HEAD.pack(constants.FRAME_HEADER, channel, len(header)),
        header,
        _FRAME_END,
    ]
    if 0 < len(body) <= max_content_size:  # an empty body has no body frame
        frames += (_FRAME_HEAD.pack(constants.FRAME_BODY, channel, len(body)), body, _FRAME_END)
    elif body:  # the frames' slices of the body are views: the body is copied once, by the join
        view = memoryview(body)
        for start in range(0, len(body), max_content_size):
            chunk = view[start : start + max_content_size]
            head = _FRAME_HEAD.pack(constants.FRAME_BODY, channel, len(chunk))
            frames += (head, chunk, _FRAME_END)
    return b"".join(frames)


def settle_frame(
    channel: int, outcome: Outcome, tag: int, *, multiple: bool, requeue: bool
) -> bytes:
    """The frame of a `basic.ack` (`requeue` unused), `basic.reject` (`multiple` unused)
    or `basic.nack` of delivery `tag` on `channel`, as pamqp marshals it."""
    bits: int
    if outcome == "ack":
        bits = multiple
    elif outcome == "reject":
        bits = requeue
    else:
        bits = multiple | requeue << 1
    return _SETTLE.pack(
        constants.FRAME_METHOD, channel, 13, 60, _SETTLE_METHODS[outcome], tag, bits,
        constants.FRAME_END,
    )  # fmt: skip
