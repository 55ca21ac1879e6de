"""Publishing, delivering and settling on aiormq channels without aiormq's per-call steps.

* `publish()` / `start_publish()` build the frames of a publish (`frames.publish_frames()`),
  register its confirm as `basic_publish()` does and queue the frames at once, with no
  await in between: the delivery tag stays the frames' place in the queue without the
  channel's lock. The confirm's future is the result.
* `deliver()` hands each delivery to a plain function from the channel's reader,
  instead of a task per delivery.
* `settle()` queues the frames of acks, nacks and rejects at once, from the settler.
* `register_writer()` lets publishes and settles write their frames to the socket
  themselves whenever aiormq's writer queue is empty (nothing written out of order).
* `take_channel_frames()` takes each confirm and delivery from the connection's reader
  while the channel's own queue is empty, instead of the channel's reader task.

They use aiormq attributes outside its API (`PUBLISH_ATTRIBUTES`, `DELIVER_ATTRIBUTES`,
`SETTLE_ATTRIBUTES`, `READ_ATTRIBUTES`). A channel that lacks one of them takes
aiormq's own way, and the test suite checks that the installed aiormq has them all.
docs/design.md says what each saves.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING, Any, Final, cast

from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from farine._broker.aiormq.calls import to_pamqp
from farine._broker.aiormq.fastpath.frames import publish_frames, settle_frame

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    import aiormq.abc

    from farine._broker.message import Outcome, PropertiesLike

__all__ = (
    "DELIVER_ATTRIBUTES",
    "PUBLISH_ATTRIBUTES",
    "READ_ATTRIBUTES",
    "SETTLE_ATTRIBUTES",
    "deliver",
    "publish",
    "register_writer",
    "settle",
    "start_publish",
    "supports",
    "take_channel_frames",
)

logger = logging.getLogger("farine.amqp")

#: What `publish()` uses of an aiormq channel.
PUBLISH_ATTRIBUTES: Final = (
    "write_queue",
    "confirmations",
    "message_id_delivery_tag",
    "delivery_tag",
    "publisher_confirms",
    "_split_body",
    "max_content_size",  # the most body bytes in one frame
    "_Channel__lock",  # the lock `basic_publish` holds from its delivery tag to its frames
)

#: What `deliver()` uses of an aiormq channel.
DELIVER_ATTRIBUTES: Final = (
    "consumers",
    "_on_deliver_frame",  # called by the channel's reader for each `basic.deliver`
    "_read_content",
    "_Channel__get_content_header",
)


#: What `settle()` uses of an aiormq channel.
SETTLE_ATTRIBUTES: Final = (
    "write_queue",
    "connection",  # its `basic_nack`: whether the broker takes nacks
    "_Channel__close_event",  # set once the channel is closing (`basic_ack` checks it)
)


def supports(channel: aiormq.abc.AbstractChannel, attributes: tuple[str, ...]) -> bool:
    """True when `channel` has all of `attributes`."""
    return all(hasattr(channel, name) for name in attributes)


_marshall: Callable[[int, list[Any]], ChannelFrame] = ChannelFrame.marshall  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

#: Per channel class and use ("publishes", "settles"): has it all the attributes that
#: use needs? (Checked on its first use.)
_supported: dict[tuple[type, str], bool] = {}


def _supported_for(
    channel: aiormq.abc.AbstractChannel, use: str, attributes: tuple[str, ...]
) -> bool:
    """True when `channel` has all of `attributes`, which `use` needs (cached per class)."""
    key = (type(channel), use)
    supported = _supported.get(key)
    if supported is None:
        supported = _supported[key] = supports(channel, attributes)
        if not supported:
            logger.debug("aiormq channel without %s: %s take its way", attributes, use)
    return supported


def publish(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    exchange: str,
    routing_key: str,
    properties: PropertiesLike,
    mandatory: bool,
) -> Awaitable[Any]:
    """Publish on a confirm channel; the result, once awaited, is the broker's confirm.

    Like `channel.basic_publish(...)`: an unroutable mandatory message raises
    `aiormq.PublishError`, a channel closing raises its reason. Falls back to it when
    the frames cannot be queued at once (the channel's lock is held by another
    publish, the writer's queue is full, the channel is closed or has no confirms).
    The frames are encoded by `publish_frames()`, else by pamqp.
    """
    confirmation = start_publish(channel, body, exchange, routing_key, properties, mandatory)
    if confirmation is not None:
        return confirmation
    return channel.basic_publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        properties=to_pamqp(properties, properties.message_id),
        mandatory=mandatory,
    )


def start_publish(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    exchange: str,
    routing_key: str,
    properties: PropertiesLike,
    mandatory: bool,
) -> asyncio.Future[Any] | None:
    """`publish()` when the frames can be queued at once: the future of the broker's
    confirm; else None, and nothing was sent."""
    raw = cast("Any", channel)
    if (
        not _supported_for(channel, "publishes", PUBLISH_ATTRIBUTES)
        or channel.is_closed
        or not raw.publisher_confirms
        or raw._Channel__lock.locked()
        or raw.write_queue.full()
        or len(routing_key) > 255  # aiormq's own check raises the error
    ):
        return None
    # A returned message is matched to its publish by its id (aiormq sets one too).
    message_id = properties.message_id or os.urandom(16).hex()
    number = channel.number
    payload = publish_frames(
        number, raw.max_content_size, exchange, routing_key, mandatory, properties,
        message_id, body,
    )  # fmt: skip
    if payload is None:  # pamqp encodes them, or raises its error
        frame = _marshall(
            number,
            [
                spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
                ContentHeader(properties=to_pamqp(properties, message_id), body_size=len(body)),
                *cast("list[ContentBody]", raw._split_body(body)),
            ],
        )
    else:
        frame = ChannelFrame(payload=payload, should_close=False)
    # From here to the frame in the queue, nothing awaits: the tag is the frame's place.
    raw.delivery_tag += 1
    tag: int = raw.delivery_tag
    confirmation: asyncio.Future[Any] = raw.create_future()
    raw.confirmations[tag] = confirmation
    ids: dict[str, int] = raw.message_id_delivery_tag
    ids[message_id] = tag
    _write(raw.connection, raw.write_queue, frame)

    def forget(_: asyncio.Future[Any]) -> None:
        if ids.get(message_id) == tag:
            del ids[message_id]

    confirmation.add_done_callback(forget)
    return confirmation


def settle(
    channel: aiormq.abc.AbstractChannel, frames: list[tuple[Outcome, int, bool, bool]]
) -> bool:
    """Queue the frames that settle deliveries, each `(outcome, tag, multiple, requeue)`,
    in order; False (nothing queued) when `channel` must send them its own way.

    That is when the channel lacks what this uses, is closing, has no room for them all
    in its writer's queue, or a nack goes to a broker that takes none (aiormq raises).
    """
    if not _supported_for(channel, "settles", SETTLE_ATTRIBUTES):
        return False
    raw = cast("Any", channel)
    if channel.is_closed or raw._Channel__close_event.is_set():
        return False
    queue: asyncio.Queue[ChannelFrame] = raw.write_queue
    if queue.maxsize and queue.qsize() + len(frames) > queue.maxsize:
        return False
    if not raw.connection.basic_nack and any(frame[0] == "nack" for frame in frames):
        return False
    number = channel.number
    connection = raw.connection
    for outcome, tag, multiple, requeue in frames:
        payload = settle_frame(number, outcome, tag, multiple=multiple, requeue=requeue)
        _write(connection, queue, ChannelFrame(payload=payload, should_close=False))
    return True


#: The `StreamWriter` of each aiormq connection that farine opened over TCP.
_writers: weakref.WeakKeyDictionary[object, asyncio.StreamWriter] = weakref.WeakKeyDictionary()


def register_writer(
    connection: aiormq.abc.AbstractConnection, writer: asyncio.StreamWriter
) -> None:
    """Let `publish()` and `settle()` write to `connection`'s `writer` themselves.

    aiormq's writer task takes each frame from the connection's queue and writes it, a
    task step per frame. Whenever that queue is empty, everything queued before has been
    written (an item leaves the queue only as the task takes it), so a frame written at
    once keeps its place.
    """
    _writers[connection] = writer


def _write(connection: object, queue: asyncio.Queue[ChannelFrame], frame: ChannelFrame) -> None:
    """Write `frame` at once when nothing waits in `queue` before it, else queue it."""
    if not queue.qsize():
        writer = _writers.get(connection)
        if writer is not None and not writer.is_closing():
            writer.write(frame.payload)
            return
    queue.put_nowait(frame)


def _give(
    message: aiormq.abc.DeliveredMessage,
    deliver: spec.Basic.Deliver,
    consumers: dict[str, object],
    on_message: Callable[[aiormq.abc.DeliveredMessage], None],
) -> None:
    """Give `message` to `on_message`, unless its consumer is gone (as aiormq drops it:
    the broker redelivers it once the channel closes)."""
    if deliver.consumer_tag not in consumers:
        return
    try:
        on_message(message)
    except Exception:
        # Raised into the reader that called this, it would close the channel or the
        # connection.
        logger.exception(
            "a delivery on channel %d could not be handed over", message.channel.number
        )


def deliver(
    channel: aiormq.abc.AbstractChannel,
    on_message: Callable[[aiormq.abc.DeliveredMessage], None],
) -> aiormq.abc.ConsumerCallback:
    """Hand each delivery of `channel` to `on_message` with no task: from the
    connection's reader while the channel's queue is empty (`take_channel_frames()`), else from
    the channel's reader.

    Returns the callback to give `channel.basic_consume()`; it calls `on_message` too,
    and only runs (in a task per delivery, as usual) when the channel lacks what the
    inline way needs. `on_message` must not block. As in aiormq, a delivery is dropped
    (and redelivered by the broker once the channel closes) when its consumer is no
    longer registered.
    """

    async def callback(message: aiormq.abc.DeliveredMessage) -> None:
        on_message(message)

    if not supports(channel, DELIVER_ATTRIBUTES):
        logger.debug("aiormq channel without %s: deliveries go through tasks", DELIVER_ATTRIBUTES)
        return callback
    raw = cast("Any", channel)
    read_header: Callable[[], Awaitable[ContentHeader]] = raw._Channel__get_content_header
    read_content: Callable[
        [spec.Basic.Deliver, ContentHeader], Awaitable[aiormq.abc.DeliveredMessage]
    ] = raw._read_content
    consumers: dict[str, object] = raw.consumers

    async def on_deliver_frame(frame: spec.Basic.Deliver) -> None:
        message = await read_content(frame, await read_header())
        _give(message, frame, consumers, on_message)

    raw._on_deliver_frame = on_deliver_frame  # when the channel's reader has the frames
    take_channel_frames(channel, on_message)
    return callback


#: What `take_channel_frames()` uses of an aiormq channel.
READ_ATTRIBUTES: Final = (
    "frames",  # the queue the connection's reader puts the channel's frames in
    "consumers",
    "confirmations",
    "publisher_confirms",
    "_confirm_delivery",  # settles one publish's confirm (a plain method)
)


class _ChannelFrames:
    """Takes a channel's deliveries and confirms from the connection's reader.

    aiormq's connection reader puts each frame in the channel's queue
    (`channel.frames.put()`), and the channel's reader task takes it from there: a
    queue hop and a task step for each delivery and each confirm. This takes the place
    of that `put()`: while the queue is empty (so the channel's reader has taken and
    handled every frame before), a `basic.ack` confirms its publishes at once, and a
    `basic.deliver` and its content frames are gathered into a message for
    `on_message`. Any other frame, and any frame while the queue holds some, goes to the
    queue as before. Content frames follow their method frame on a channel, with
    nothing in between: a delivery gathered here has all its frames here.
    """

    __slots__ = (
        "_bodies",
        "_channel",
        "_confirm",
        "_confirmations",
        "_consumers",
        "_deliver",
        "_header",
        "_on_message",
        "_put",
        "_queue",
        "_received",
    )

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        on_message: Callable[[aiormq.abc.DeliveredMessage], None] | None,
    ) -> None:
        raw = cast("Any", channel)
        self._channel = channel
        self._queue: asyncio.Queue[tuple[int, Any]] = raw.frames
        self._put: Callable[[tuple[int, Any]], Awaitable[None]] = raw.frames.put
        self._consumers: dict[str, object] = raw.consumers
        self._confirmations: dict[int, object] = raw.confirmations
        self._confirm: Callable[[int, spec.Basic.Ack], None] = raw._confirm_delivery
        self._on_message = on_message
        self._deliver: spec.Basic.Deliver | None = None  # the delivery being gathered
        self._header: ContentHeader | None = None
        self._bodies: list[ContentBody] = []
        self._received = 0

    async def put(self, item: tuple[int, Any]) -> None:
        """What the connection's reader calls with each frame of the channel."""
        frame: object = item[1]
        if self._deliver is not None:
            if self._gather(frame):
                return
            await self._hand_over()  # not content: the channel's reader sorts it out
        elif not self._queue.qsize() and not self._channel.is_closed:
            kind = type(frame)
            if kind is spec.Basic.Ack:
                if self._confirmed(cast("spec.Basic.Ack", frame)):
                    return
            elif kind is spec.Basic.Deliver and self._on_message is not None:
                self._deliver = cast("spec.Basic.Deliver", frame)
                return
        await self._put(item)

    def _confirmed(self, frame: spec.Basic.Ack) -> bool:
        """Confirm the publishes `frame` acks, as the channel's reader would; False
        when it would do anything else (log an unknown tag, ignore confirms)."""
        tag = frame.delivery_tag
        confirmations = self._confirmations
        if tag not in confirmations or not cast("Any", self._channel).publisher_confirms:
            return False
        if frame.multiple:
            for each in [each for each in confirmations if each <= tag]:
                self._confirm(each, frame)
        else:
            self._confirm(tag, frame)
        return True

    def _gather(self, frame: Any) -> bool:
        """Add a content frame to the delivery being gathered (False: not one)."""
        header = self._header
        if header is None:
            if type(frame) is not ContentHeader:
                return False
            self._header = frame
            if not frame.body_size:
                self._deliver_message()
            return True
        if type(frame) is not ContentBody:
            return False
        self._bodies.append(frame)
        self._received += len(frame.value)
        if self._received >= header.body_size or not frame.value:  # as aiormq reads them
            self._deliver_message()
        return True

    def _deliver_message(self) -> None:
        deliver, header, bodies = self._deliver, self._header, self._bodies
        assert deliver is not None
        assert header is not None
        self._deliver = self._header = None
        self._bodies = []
        self._received = 0
        body = bodies[0].value if len(bodies) == 1 else b"".join(part.value for part in bodies)
        on_message = self._on_message
        assert on_message is not None  # else no delivery is gathered
        message = DeliveredMessage(
            delivery=deliver, header=header, body=body, channel=self._channel
        )
        _give(message, deliver, self._consumers, on_message)

    async def _hand_over(self) -> None:
        """Queue the frames of the delivery being gathered, for the channel's reader."""
        frames: list[Any] = [self._deliver, self._header, *self._bodies]
        self._deliver = self._header = None
        self._bodies = []
        self._received = 0
        for frame in frames:
            if frame is not None:
                await self._put((0, frame))


def take_channel_frames(
    channel: aiormq.abc.AbstractChannel,
    on_message: Callable[[aiormq.abc.DeliveredMessage], None] | None = None,
) -> None:
    """Take `channel`'s confirms, and its deliveries for `on_message` (if given), from
    the connection's reader, with no queue hop (`_ChannelFrames`).

    Nothing changes for a channel that lacks what this uses.
    """
    if not _supported_for(channel, "reads", READ_ATTRIBUTES):
        return
    reader = _ChannelFrames(channel, on_message)
    vars(cast("Any", channel).frames)["put"] = reader.put
