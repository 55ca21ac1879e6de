"""Where failed messages go: delay queues, dead-letter queues, and the headers they carry."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from farine._broker.interface import Binding, ExchangeSpec, QueueSpec, Topology
from farine._broker.message import Properties
from farine._retry import delay_level, level_name

if TYPE_CHECKING:
    from farine._broker.message import Message

__all__ = (
    "ATTEMPTS",
    "ERROR_MESSAGE",
    "ERROR_TYPE",
    "MAX_ERROR_MESSAGE",
    "ORIGINAL_EXCHANGE",
    "ORIGINAL_ROUTING_KEY",
    "DeadLetter",
    "Destination",
    "attempts_made",
    "copy_properties",
    "dead_letter_headers",
    "delay_destination",
    "original_route",
    "restore_route",
)

ERROR_TYPE: Final = "x-farine-error-type"
ERROR_MESSAGE: Final = "x-farine-error-message"
ATTEMPTS: Final = "x-farine-attempts"
SERVICE: Final = "x-farine-service"
ENTRYPOINT: Final = "x-farine-entrypoint"
FAILED_AT: Final = "x-farine-failed-at"
ORIGINAL_EXCHANGE: Final = "x-farine-original-exchange"
ORIGINAL_ROUTING_KEY: Final = "x-farine-original-routing-key"

#: Longest `x-farine-error-message` (characters); longer messages are cut.
MAX_ERROR_MESSAGE: Final = 500


@dataclass(frozen=True, slots=True)
class Destination:
    """Where to publish a message, and what to declare first."""

    exchange: str
    routing_key: str
    topology: Topology


def _queue_arguments(quorum: bool, extra: tuple[tuple[str, Any], ...] = ()) -> tuple[Any, ...]:
    return ((("x-queue-type", "quorum"),) if quorum else ()) + extra


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The dead-letter queue of one consumer: `<queue>.dead`, reached through the default
    exchange, or through `exchange` (bound with the work queue's name) when one is set.

    Attributes:
        queue: The work queue.
        exchange: The dead-letter exchange; `""` for the default exchange.
        durable: Declare the dead-letter queue (and exchange) durable.
        quorum: Declare the dead-letter queue as a quorum queue.
    """

    queue: str
    exchange: str = ""
    durable: bool = True
    quorum: bool = False

    @property
    def queue_name(self) -> str:
        """The dead-letter queue's name."""
        return f"{self.queue}.dead"

    def destination(self) -> Destination:
        """Where dead letters are published."""
        dead = QueueSpec(
            self.queue_name,
            durable=self.durable or self.quorum,
            arguments=_queue_arguments(self.quorum),
        )
        if not self.exchange:
            return Destination("", self.queue_name, Topology(queues=(dead,)))
        return Destination(
            self.exchange,
            self.queue,
            Topology(
                exchanges=(ExchangeSpec(self.exchange, "direct", durable=self.durable),),
                queues=(dead,),
                bindings=(Binding(self.queue_name, self.exchange, self.queue),),
            ),
        )


def delay_destination(queue: str, delay: float, *, durable: bool, quorum: bool) -> Destination:
    """The delay queue where a message waits `delay` seconds before going back to `queue`.

    One queue per level of `DELAY_LEVELS` (`<queue>.delay.<level>`): its messages expire
    after their own TTL and are dead-lettered through the default exchange to `queue`.
    """
    name = f"{queue}.delay.{level_name(delay_level(delay))}"
    arguments = _queue_arguments(
        quorum, (("x-dead-letter-exchange", ""), ("x-dead-letter-routing-key", queue))
    )
    spec = QueueSpec(name, durable=durable or quorum, arguments=arguments)
    return Destination("", name, Topology(queues=(spec,)))


def original_route(message: Message) -> tuple[str, str]:
    """The exchange and routing key `message` was first published with."""
    headers = message.headers
    exchange = headers.get(ORIGINAL_EXCHANGE)
    routing_key = headers.get(ORIGINAL_ROUTING_KEY)
    if isinstance(exchange, str) and isinstance(routing_key, str):
        return exchange, routing_key
    return message.exchange, message.routing_key


def restore_route(message: Message) -> None:
    """Give a message back from a delay queue the exchange and routing key it first had."""
    exchange, routing_key = original_route(message)
    message.exchange, message.routing_key = exchange, routing_key


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str | bytes):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def attempts_made(message: Message, queue: str) -> int:
    """Failed attempts `message` went through before this delivery.

    The `x-farine-attempts` header, reconciled with the broker's `x-death` counts of the
    work queue's delay queues (the larger wins: a header lost on the way counts less).
    """
    headers = message.headers
    counted = _as_int(headers.get(ATTEMPTS))
    prefix = f"{queue}.delay."
    deaths = headers.get("x-death")
    expired = 0
    if isinstance(deaths, list | tuple):
        for death in deaths:  # pyright: ignore[reportUnknownVariableType]
            if not isinstance(death, Mapping):
                continue
            entry: Mapping[str, Any] = death  # pyright: ignore[reportUnknownVariableType]
            where = entry.get("queue")
            if isinstance(where, bytes):
                where = where.decode(errors="replace")
            if isinstance(where, str) and where.startswith(prefix):
                expired += _as_int(entry.get("count"))
    return max(counted, expired)


def copy_properties(
    message: Message, headers: dict[str, Any], expiration: str | None
) -> Properties:
    """`message`'s properties with other headers and TTL, to publish it again."""
    values = message.properties_dict()
    values.pop("cluster_id", None)  # deprecated; RabbitMQ refuses it on publish
    values["headers"] = headers
    values["expiration"] = expiration
    return Properties(**values)


def _bounded(text: str) -> str:
    if len(text) <= MAX_ERROR_MESSAGE:
        return text
    return text[: MAX_ERROR_MESSAGE - 3] + "..."


def dead_letter_headers(
    message: Message,
    *,
    error_type: str,
    error_message: str,
    attempts: int,
    service: str,
    entrypoint: str,
) -> dict[str, Any]:
    """The headers of a dead letter: the message's own, plus why it is there."""
    exchange, routing_key = original_route(message)
    headers = dict(message.headers)
    headers.update({
        ERROR_TYPE: error_type,
        ERROR_MESSAGE: _bounded(error_message),
        ATTEMPTS: attempts,
        SERVICE: service,
        ENTRYPOINT: entrypoint,
        FAILED_AT: datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        ORIGINAL_EXCHANGE: exchange,
        ORIGINAL_ROUTING_KEY: routing_key,
    })  # fmt: skip
    return headers
