"""The message a consumer receives: raw body, properties, and how to settle it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from farine._broker.errors import MessageStateError

if TYPE_CHECKING:
    import datetime
    from collections.abc import Mapping

__all__ = ("Message", "Outcome", "Properties", "PropertiesLike", "Settler")

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


class Settler(Protocol):
    """What a transport gives each message so it can be settled, from any thread."""

    @property
    def alive(self) -> bool:
        """False once the channel the message came on is gone (settling is then moot)."""
        ...

    def settle(self, delivery_tag: int, outcome: Outcome, requeue: bool) -> None:
        """Send the outcome to the broker (without waiting); must be thread-safe."""
        ...


class Message:
    """A message delivered to a consumer.

    The handler gets it as its `message` argument. Settle it at most once with
    `ack()`, `nack()` or `reject()`; a message the handler leaves unsettled is acked
    when the handler returns, or nacked when it raises (see the ack policy in the docs).
    These methods do not block and may be called from `def` and `async def` handlers.

    Attributes:
        body: The raw body bytes.
        delivery_tag: The broker's tag of this delivery on its channel.
        exchange: The exchange the message was published to.
        routing_key: The routing key it was published with.
        redelivered: True when the broker delivered it before and it was not acked.
        properties: All AMQP basic properties.
    """

    __slots__ = (
        "_outcome",
        "_settler",
        "body",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "properties",
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
        self.properties = properties
        self.consumer_tag = consumer_tag
        self._settler = settler
        self._outcome: Outcome | None = None

    def __repr__(self) -> str:
        return (
            f"<Message exchange={self.exchange!r} routing_key={self.routing_key!r} "
            f"delivery_tag={self.delivery_tag} redelivered={self.redelivered} "
            f"outcome={self._outcome} body={self.body[:64]!r}>"
        )

    # -- properties -----------------------------------------------------------------------

    @property
    def headers(self) -> Mapping[str, Any]:
        """Application headers (empty when the publisher sent none)."""
        return self.properties.headers or {}

    @property
    def message_id(self) -> str | None:
        """The `message_id` property."""
        return self.properties.message_id

    @property
    def correlation_id(self) -> str | None:
        """The `correlation_id` property (ties a reply to its request)."""
        return self.properties.correlation_id

    @property
    def reply_to(self) -> str | None:
        """The `reply_to` property (where the publisher expects a reply)."""
        return self.properties.reply_to

    @property
    def timestamp(self) -> datetime.datetime | None:
        """The `timestamp` property."""
        return self.properties.timestamp

    @property
    def content_type(self) -> str | None:
        """The `content_type` property."""
        return self.properties.content_type

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Delivery fields as a dict, as kombu's messages (and so the seed) offered."""
        return {
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "redelivered": self.redelivered,
            "delivery_tag": self.delivery_tag,
            "consumer_tag": self.consumer_tag,
        }

    def properties_dict(self) -> dict[str, Any]:
        """The AMQP properties that are set, as a dict (`type` is `message_type`)."""
        values = {name: getattr(self.properties, name, None) for name in _PROPERTY_NAMES}
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
    def acknowledged(self) -> bool:
        """True once settled (kombu's name, kept for code written for the seed)."""
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
        self._settler.settle(self.delivery_tag, outcome, requeue)

    def _alive(self) -> bool:
        return self._settler.alive
