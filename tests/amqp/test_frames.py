"""`publish_frames()` and `settle_frame()`: the bytes pamqp writes for the same frames (as
aiormq sends them)."""

from __future__ import annotations

import datetime
import random
import struct
from typing import Any

import pytest
from pamqp import commands as spec
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from farine._broker.aiormq.calls import to_pamqp
from farine._broker.aiormq.fastpath.frames import publish_frames, settle_frame
from farine._broker.message import Outcome, Properties

FRAME_BODY = 131_064  # RabbitMQ's default frame_max (131072) less a frame's 8 bytes
WHEN = datetime.datetime(2024, 1, 2, 3, 4, 5)


def pamqp_frames(
    channel: int, size: int, exchange: str, key: str, mandatory: bool, props: Properties,
    message_id: str, body: bytes,
) -> bytes:  # fmt: skip
    """What aiormq's `ChannelFrame.marshall` writes: pamqp's frames, one after the other."""
    frames: list[Any] = [
        spec.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory),
        ContentHeader(properties=to_pamqp(props, message_id), body_size=len(body)),
        *(ContentBody(body[i : i + size]) for i in range(0, len(body), size)),
    ]
    return b"".join(frame.marshal(value, channel) for value in frames)


HEADERS: list[dict[str, Any] | None] = [
    None,
    {},
    {"x-farine-deadline": "1700000000.250000", "x-farine-unary": 1},
    {
        "n": -5, "big": 2**40, "f": 1.5, "t": True, "s": "é", "b": bytearray(b"\x00\x01"),
        "l": [1, "a"], "d": {"in": None}, "when": WHEN.replace(tzinfo=datetime.UTC),
    },
]  # fmt: skip
TEXTS = [None, "", "a", "application/json", "ünïcode ✓", "x" * 255]
BODIES = [b"", b"{}", bytes(range(256)) * 3, b"z" * FRAME_BODY, b"y" * (2 * FRAME_BODY + 7)]
UTC_PLUS_2 = datetime.timezone(datetime.timedelta(hours=2))


def random_properties(rng: random.Random) -> Properties:
    def text() -> str | None:
        return rng.choice(TEXTS)

    return Properties(
        content_type=text(),
        content_encoding=text(),
        headers=rng.choice(HEADERS),
        delivery_mode=rng.choice([None, 1, 2]),
        priority=rng.choice([None, 0, 9]),
        correlation_id=text(),
        reply_to=rng.choice([None, "amq.rabbitmq.reply-to", "q"]),
        expiration=rng.choice([None, "", "30000"]),
        message_id=text(),
        timestamp=rng.choice([None, WHEN, WHEN.replace(tzinfo=UTC_PLUS_2)]),
        message_type=text(),
        user_id=rng.choice([None, "guest"]),
        app_id=text(),
        cluster_id=text(),  # deprecated: sent by neither
    )


@pytest.mark.parametrize("seed", range(300))
def test_the_same_bytes_as_pamqp(seed: int) -> None:
    rng = random.Random(seed)
    props = random_properties(rng)
    body = rng.choice(BODIES)
    exchange = rng.choice(["", "calc", "a.b-c_d:e@f#g,h/i+j k", "x" * 127])
    key = rng.choice(["", "calc__add", "ü" * 127])
    channel = rng.choice([1, 2, 65535])
    mandatory = rng.choice([True, False])
    message_id = props.message_id or "generated"
    expected = pamqp_frames(channel, FRAME_BODY, exchange, key, mandatory, props, message_id, body)
    got = publish_frames(channel, FRAME_BODY, exchange, key, mandatory, props, message_id, body)
    assert got == expected


@pytest.mark.parametrize(
    ("exchange", "key", "props"),
    [
        ("bad name!", "k", Properties()),  # pamqp refuses the exchange name
        ("x" * 128, "k", Properties()),
        ("e", "ü" * 128, Properties()),  # 256 bytes: longer than a short string
        ("e", "k", Properties(correlation_id="c" * 256)),
        ("e", "k", Properties(app_id="é" * 128)),
        ("e", "k", Properties(delivery_mode=0)),
    ],
)
def test_what_it_does_not_encode_is_left_to_pamqp(
    exchange: str, key: str, props: Properties
) -> None:
    assert publish_frames(1, FRAME_BODY, exchange, key, False, props, "id", b"") is None
    with pytest.raises((ValueError, TypeError, struct.error)):
        pamqp_frames(1, FRAME_BODY, exchange, key, False, props, "id", b"")


@pytest.mark.parametrize("seed", range(100))
def test_settle_frames_are_pamqp_s(seed: int) -> None:
    rng = random.Random(seed)
    channel = rng.choice([1, 2, 65535])
    tag = rng.choice([0, 1, 255, 2**32 + 1, 2**63 - 1])  # pamqp takes no larger tag
    multiple, requeue = rng.choice([True, False]), rng.choice([True, False])
    outcomes: list[Outcome] = ["ack", "nack", "reject"]
    outcome = rng.choice(outcomes)
    method: Any
    if outcome == "ack":
        method = spec.Basic.Ack(tag, multiple)
    elif outcome == "nack":
        method = spec.Basic.Nack(tag, multiple, requeue)
    else:
        method = spec.Basic.Reject(tag, requeue)
    got = settle_frame(channel, outcome, tag, multiple=multiple, requeue=requeue)
    assert got == frame.marshal(method, channel)
