"""The message a consumer receives: raw body, properties, and how to settle it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from farine._broker.errors import MessageStateError
from farine.codec import BodyDecoder

if TYPE_CHECKING:
    import datetime

__all__ = ("Message", "MessageProperties", "Outcome", "Properties", "PropertiesLike", "Settler")

#: How a message was settled.
Outcome = Literal["ack", "nack", "reject"]

_PROPERTY_NAMES: Final = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
    "cluster_id",
)


#: farine's property name -> the key kombu's `message.properties` dict uses for it.
_KOMBU_KEYS: Final = tuple(
    (name, {"headers": "application_headers", "message_type": "type"}.get(name, name))
    for name in _PROPERTY_NAMES
)

#: Decodes `Message.payload`: untyped, as kombu's `decode()` did.
_PAYLOAD: Final = BodyDecoder()


class PropertiesLike(Protocol):
    """The AMQP basic properties, as farine's `Properties` and pamqp's carry them."""

    @property
    def content_type(self) -> str | None: ...
    @property
    def content_encoding(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, Any] | None: ...
    @property
    def delivery_mode(self) -> int | None: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def expiration(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def timestamp(self) -> datetime.datetime | None: ...
    @property
    def message_type(self) -> str | None: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def app_id(self) -> str | None: ...
    @property
    def cluster_id(self) -> str | None: ...


@dataclass(slots=True, kw_only=True)
class Properties:
    """AMQP basic properties of a message (names as in the AMQP 0-9-1 spec, `type` aside).

    Attributes:
        content_type: MIME type of the body (`application/json` for farine).
        content_encoding: Encoding of the body (compression), if any.
        headers: Application headers.
        delivery_mode: 1 = transient, 2 = persistent.
        priority: Message priority (0-9).
        correlation_id: Ties a reply to its request.
        reply_to: Queue the receiver should reply to.
        expiration: Per-message TTL in milliseconds, as a string.
        message_id: Application message identifier.
        timestamp: When the message was created.
        message_type: The AMQP `type` property.
        user_id: Authenticated user that published the message (checked by RabbitMQ).
        app_id: Publishing application.
        cluster_id: Deprecated AMQP property, kept for completeness.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime.datetime | None = None
    message_type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


class MessageProperties(Mapping[str, Any]):
    """A message's AMQP properties, read as attributes or as kombu's dict.

    As attributes they have farine's names (`properties.content_type`,
    `properties.headers`, `properties.message_type`); as a read-only mapping they have
    the keys of kombu's `message.properties` (and so baguette-messaging's): only the properties
    that are set, with `application_headers` for the headers, `type` for the message
    type and `timestamp` in whole seconds since the epoch.

    Example:
        ```python
        reply_to = message.properties["reply_to"]  # as a seed handler wrote it
        reply_to = message.properties.reply_to  # the same
        ```
    """

    __slots__ = ("_items", "_raw")

    def __init__(self, raw: PropertiesLike) -> None:
        self._raw = raw
        self._items: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"MessageProperties({self._as_dict()!r})"

    def _as_dict(self) -> dict[str, Any]:
        if self._items is None:
            items: dict[str, Any] = {}
            for name, key in _KOMBU_KEYS:
                value = getattr(self._raw, name, None)
                # Some readers give the deprecated cluster_id as "" when it was not sent.
                if value is None or (name == "cluster_id" and not value):
                    continue
                if name == "timestamp":
                    value = int(value.timestamp())
                elif name == "headers":
                    value = dict(value)
                items[key] = value
            self._items = items
        return self._items

    def __getitem__(self, key: str) -> Any:
        return self._as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict())

    def __len__(self) -> int:
        return len(self._as_dict())

    @property
    def content_type(self) -> str | None:
        """MIME type of the body."""
        return self._raw.content_type

    @property
    def content_encoding(self) -> str | None:
        """Encoding of the body."""
        return self._raw.content_encoding

    @property
    def headers(self) -> Mapping[str, Any] | None:
        """Application headers, or None."""
        return self._raw.headers

    @property
    def delivery_mode(self) -> int | None:
        """1 = transient, 2 = persistent."""
        return self._raw.delivery_mode

    @property
    def priority(self) -> int | None:
        """Message priority."""
        return self._raw.priority

    @property
    def correlation_id(self) -> str | None:
        """Ties a reply to its request."""
        return self._raw.correlation_id

    @property
    def reply_to(self) -> str | None:
        """Where the publisher expects a reply."""
        return self._raw.reply_to

    @property
    def expiration(self) -> str | None:
        """Per-message TTL in milliseconds, as a string."""
        return self._raw.expiration

    @property
    def message_id(self) -> str | None:
        """Application message identifier."""
        return self._raw.message_id

    @property
    def timestamp(self) -> datetime.datetime | None:
        """When the message was created."""
        return self._raw.timestamp

    @property
    def message_type(self) -> str | None:
        """The AMQP `type` property."""
        return self._raw.message_type

    @property
    def user_id(self) -> str | None:
        """Authenticated user that published the message."""
        return self._raw.user_id

    @property
    def app_id(self) -> str | None:
        """Publishing application."""
        return self._raw.app_id

    @property
    def cluster_id(self) -> str | None:
        """Deprecated AMQP property."""
        return self._raw.cluster_id


class Settler(Protocol):
    """What a transport gives each message so it can be settled, from any thread."""

    @property
    def alive(self) -> bool:
        """False once the channel the message came on is gone (settling is then moot)."""
        ...

    def settle(self, delivery_tag: int, outcome: Outcome, requeue: bool) -> None:
        """Send the outcome to the broker (without waiting); must be thread-safe."""
        ...


_NOT_DECODED: Final = object()


class Message:
    """A message delivered to a consumer.

    The handler gets it as its `message` argument. Settle it at most once with
    `ack()`, `nack()` or `reject()`; a message the handler leaves unsettled is acked
    when the handler returns, or nacked when it raises (see the ack policy in the docs).
    These methods do not block and may be called from `def` and `async def` handlers.

    Handlers written for baguette-messaging find kombu's attributes: `body`, `payload`
    and `decode()`, `content_type`, `content_encoding`, `headers`, `properties` (also a
    dict with kombu's keys), `delivery_info`, `delivery_tag`, `acknowledged`, `ack()`,
    `reject()` and `requeue()`.

    Attributes:
        body: The raw body bytes.
        delivery_tag: The broker's tag of this delivery on its channel.
        exchange: The exchange the message was published to.
        routing_key: The routing key it was published with.
        redelivered: True when the broker delivered it before and it was not acked.
        consumer_tag: The tag of the consumer it was delivered to.
    """

    __slots__ = (
        "_outcome",
        "_payload",
        "_properties",
        "_raw_properties",
        "_requeued",
        "_settler",
        "body",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        body: bytes,
        *,
        delivery_tag: int,
        exchange: str,
        routing_key: str,
        redelivered: bool,
        properties: PropertiesLike,
        settler: Settler,
        consumer_tag: str = "",
    ) -> None:
        self.body = body
        self.delivery_tag = delivery_tag
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = redelivered
        self._raw_properties = properties
        self._properties: MessageProperties | None = None
        self._payload: Any = _NOT_DECODED
        self.consumer_tag = consumer_tag
        self._settler = settler
        self._outcome: Outcome | None = None
        self._requeued = False

    def __repr__(self) -> str:
        return (
            f"<Message exchange={self.exchange!r} routing_key={self.routing_key!r} "
            f"delivery_tag={self.delivery_tag} redelivered={self.redelivered} "
            f"outcome={self._outcome} body={self.body[:64]!r}>"
        )

    # -- properties -----------------------------------------------------------------------

    @property
    def properties(self) -> MessageProperties:
        """All AMQP properties: attributes, or kombu's dict (see `MessageProperties`)."""
        if self._properties is None:
            self._properties = MessageProperties(self._raw_properties)
        return self._properties

    @property
    def payload(self) -> Any:
        """The body decoded as its content type says, untyped (kombu's `payload`).

        JSON and msgpack give dicts, lists and scalars; text gives `str`; other types the
        raw bytes. Decoded once, on first use.

        Raises:
            farine.codec.BadBody: The body does not decode.
        """
        if self._payload is _NOT_DECODED:
            raw = self._raw_properties
            self._payload = _PAYLOAD.decode(self.body, raw.content_type, raw.content_encoding)
        return self._payload

    def decode(self) -> Any:
        """Return `payload` (kombu's method of the same name).

        Raises:
            farine.codec.BadBody: The body does not decode.
        """
        return self.payload

    @property
    def headers(self) -> Mapping[str, Any]:
        """Application headers (empty when the publisher sent none)."""
        return self._raw_properties.headers or {}

    @property
    def message_id(self) -> str | None:
        """The `message_id` property."""
        return self._raw_properties.message_id

    @property
    def delivery_count(self) -> int:
        """Earlier deliveries of this message that were not acked (a quorum queue's
        `x-delivery-count` header); 0 on a first delivery, and always on classic queues."""
        count = self.headers.get("x-delivery-count")
        return count if isinstance(count, int) and not isinstance(count, bool) else 0

    @property
    def correlation_id(self) -> str | None:
        """The `correlation_id` property (ties a reply to its request)."""
        return self._raw_properties.correlation_id

    @property
    def reply_to(self) -> str | None:
        """The `reply_to` property (where the publisher expects a reply)."""
        return self._raw_properties.reply_to

    @property
    def timestamp(self) -> datetime.datetime | None:
        """The `timestamp` property."""
        return self._raw_properties.timestamp

    @property
    def content_type(self) -> str | None:
        """The `content_type` property (`application/json` from farine and baguette-messaging)."""
        return self._raw_properties.content_type

    @property
    def content_encoding(self) -> str | None:
        """The `content_encoding` property (`utf-8` from farine and baguette-messaging)."""
        return self._raw_properties.content_encoding

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Delivery fields as a dict, with the keys of kombu's (and so baguette-messaging's)."""
        return {
            "consumer_tag": self.consumer_tag,
            "delivery_tag": self.delivery_tag,
            "redelivered": self.redelivered,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
        }

    def properties_dict(self) -> dict[str, Any]:
        """The AMQP properties that are set, as a dict of farine's names."""
        raw = self._raw_properties
        values = {name: getattr(raw, name, None) for name in _PROPERTY_NAMES}
        return {name: value for name, value in values.items() if value is not None}

    # -- settling -------------------------------------------------------------------------

    @property
    def outcome(self) -> Outcome | None:
        """How the message was settled: `"ack"`, `"nack"`, `"reject"`, or None if not yet."""
        return self._outcome

    @property
    def settled(self) -> bool:
        """True once acked, nacked or rejected."""
        return self._outcome is not None

    @property
    def settleable(self) -> bool:
        """True until settled, while the channel that delivered it is open: after a
        reconnection the broker redelivers the message on a new channel, and settling
        this copy no longer counts."""
        return self._outcome is None and self._settler.alive

    @property
    def requeued(self) -> bool | None:
        """After `nack()` or `reject()`: whether it asked for a requeue; else None."""
        if self._outcome in (None, "ack"):
            return None
        return self._requeued

    @property
    def acknowledged(self) -> bool:
        """True once settled (kombu's name, kept for code written for baguette-messaging)."""
        return self._outcome is not None

    def ack(self) -> None:
        """Acknowledge: the broker forgets the message.

        Raises:
            MessageStateError: The message was already settled.
        """
        self._settle("ack", False)

    def nack(self, requeue: bool = True) -> None:
        """Negatively acknowledge: requeue the message (default) or drop/dead-letter it.

        Raises:
            MessageStateError: The message was already settled.
        """
        self._settle("nack", requeue)

    def reject(self, requeue: bool = False) -> None:
        """Reject the message: drop it, or dead-letter it when its queue has a DLX.

        Raises:
            MessageStateError: The message was already settled.
        """
        self._settle("reject", requeue)

    def requeue(self) -> None:
        """Put the message back in its queue (kombu's name for `reject(requeue=True)`)."""
        self._settle("reject", True)

    def _settle(self, outcome: Outcome, requeue: bool) -> None:
        if self._outcome is not None:
            raise MessageStateError(
                f"message already settled ({self._outcome}); it cannot be {outcome}ed too"
            )
        self._outcome = outcome
        self._requeued = requeue
        self._settler.settle(self.delivery_tag, outcome, requeue)
