"""`message()`: a `farine.amqp.Message` for calling a consumer directly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from farine._broker.message import Message, Outcome, Properties
from farine.codec import encode_body

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ("RecordedMessage", "message")


class _Settlement:
    """The settler of a test message: remembers how it was settled, sends nothing."""

    __slots__ = ("outcome", "requeue")

    def __init__(self) -> None:
        self.outcome: Outcome | None = None
        self.requeue: bool | None = None

    @property
    def alive(self) -> bool:
        return True

    def settle(self, delivery_tag: int, outcome: Outcome, requeue: bool) -> None:
        self.outcome = outcome
        self.requeue = requeue


class RecordedMessage(Message):
    """A `farine.amqp.Message` built by `message()`: settling it is only recorded.

    `outcome` says how it was settled (`"ack"`, `"nack"`, `"reject"`, None while not
    settled), `settled` whether it was, and `requeued` whether a nack or reject asked
    for a requeue. Settling it twice raises `MessageStateError`, as in a service.
    """

    __slots__ = ("_settlement",)

    def __init__(self, body: bytes, settlement: _Settlement, **fields: Any) -> None:
        super().__init__(body, settler=settlement, **fields)
        self._settlement = settlement

    @property
    def requeued(self) -> bool | None:
        """After `nack()` or `reject()`: whether it asked for a requeue; else None."""
        if self._settlement.outcome in (None, "ack"):
            return None
        return self._settlement.requeue


def message(
    body: object,
    *,
    exchange: str = "",
    routing_key: str = "",
    redelivered: bool = False,
    delivery_tag: int = 1,
    headers: Mapping[str, Any] | None = None,
    serializer: str = "json",
    **properties: Any,
) -> RecordedMessage:
    """Build the message a consumer would get for `body`, to call the handler directly.

    Args:
        body: The body, as a publisher sends it: `bytes` as they are, labelled
            `application/data` (pass `content_type` for already-encoded data),
            anything else encoded with `serializer`.
        exchange: The exchange it was "published" to.
        routing_key: Its routing key.
        redelivered: Whether it is a redelivery.
        delivery_tag: Its delivery tag.
        headers: Application headers.
        serializer: `json` (default) or `msgpack`; sets the content type of a body
            that is not bytes.
        **properties: Other AMQP properties (`message_id`, `correlation_id`,
            `reply_to`, `content_type`, `timestamp`, ...).

    Example:
        ```python
        msg = farine.testing.message({"id": 1})
        worker.created({"id": 1}, msg)
        assert msg.outcome == "ack"
        ```
    """
    data, content_type, content_encoding = encode_body(body, serializer)
    values: dict[str, Any] = {
        "content_type": content_type,
        "content_encoding": content_encoding,
        "headers": dict(headers) if headers else None,
        **properties,
    }
    return RecordedMessage(
        data,
        _Settlement(),
        delivery_tag=delivery_tag,
        exchange=exchange,
        routing_key=routing_key,
        redelivered=redelivered,
        properties=Properties(**values),
    )
