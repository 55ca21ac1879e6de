"""The failure path of a consumer: retry a failed message later, or dead-letter it.

A message is never lost between the two: its copy is published (with confirms) to the
delay or dead-letter queue first, and only then is the original acked; a process that
dies in between leaves the original unacked, to be delivered again (at worst, twice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio

from farine._broker.errors import PublishError, UnroutableError
from farine._broker.interface import Outgoing
from farine._retry import DELAY_LEVELS, Permanent, RetryDecision, RetryPolicy
from farine.codec import BadBody
from farine.exceptions import ConfigurationError

from ._dead_letter import (
    ATTEMPTS,
    ORIGINAL_EXCHANGE,
    ORIGINAL_ROUTING_KEY,
    DeadLetter,
    Destination,
    attempts_made,
    copy_properties,
    dead_letter_headers,
    delay_destination,
    original_route,
)

if TYPE_CHECKING:
    from farine._broker import Connection
    from farine._broker.message import Message, Properties
    from farine.ops._outcomes import MessageOutcome

__all__ = ("FailurePath",)

logger = logging.getLogger("farine.amqp")

#: Longest wait (seconds) before a message whose copy could not be published is
#: requeued, holding its prefetch slot meanwhile (the broker is in trouble then).
MAX_FALLBACK_WAIT: Final = 5.0


@dataclass(slots=True)
class FailurePath:
    """What one consumer does with a message its handler failed on.

    Attributes:
        service: The service's name (for the dead letter's headers).
        entrypoint: The entrypoint's qualified name (for logs and headers).
        queue: The work queue.
        policy: The retry policy.
        dead_letter: The dead-letter queue; None to reject instead (dropped, or
            dead-lettered by the broker when the queue has an `x-dead-letter-exchange`).
        durable: Declare delay queues durable.
        quorum: Declare delay queues as quorum queues.
        publish_timeout: Seconds a copy may take to be confirmed.
    """

    service: str
    entrypoint: str
    queue: str
    policy: RetryPolicy
    dead_letter: DeadLetter | None
    durable: bool = True
    quorum: bool = False
    publish_timeout: float = 30.0
    _declared: set[str] = field(default_factory=set[str])

    async def failed(
        self, message: Message, exc: BaseException, connection: Connection
    ) -> MessageOutcome | None:
        """Retry `message` later, or dead-letter it, after `exc` ended its handling.

        Returns:
            `retried` or `dead_lettered` when a copy went to a delay or dead-letter
            queue (the original is then acked); None when `message` was rejected or
            requeued (its own state says so).
        """
        if isinstance(exc, BadBody):
            return await self._give_up(message, exc, 0, f"bad body: {exc}", connection)
        spec = self.policy.spec
        if spec.requeue:
            attempt = 2 if message.redelivered else 1
        else:
            attempt = attempts_made(message, self.queue) + 1
        decision = self.policy.decide(exc, attempt)
        if not decision.retry:
            return await self._give_up(message, exc, attempt, decision.reason, connection)
        if spec.requeue:
            logger.warning(
                "%s raised %s on message %s; requeueing it once",
                self.entrypoint, _summary(exc), message.message_id,
            )  # fmt: skip
            message.nack(requeue=True)
            return None
        return await self._retry_later(message, exc, attempt, decision, connection)

    async def _retry_later(
        self,
        message: Message,
        exc: BaseException,
        attempt: int,
        decision: RetryDecision,
        connection: Connection,
    ) -> MessageOutcome | None:
        delay = min(decision.delay, DELAY_LEVELS[-1])
        limit = self.policy.spec.attempts
        logger.warning(
            "%s raised %s on message %s (attempt %d%s); retrying in %.2fs",
            self.entrypoint, _summary(exc), message.message_id, attempt,
            f"/{limit}" if limit is not None else "", delay,
        )  # fmt: skip
        exchange, routing_key = original_route(message)
        headers = dict(message.headers)
        headers[ATTEMPTS] = attempt
        headers.setdefault(ORIGINAL_EXCHANGE, exchange)
        headers.setdefault(ORIGINAL_ROUTING_KEY, routing_key)
        destination = delay_destination(self.queue, delay, durable=self.durable, quorum=self.quorum)
        properties = copy_properties(message, headers, str(round(delay * 1000)))
        moved = await self._move(message, destination, properties, connection, fallback_wait=delay)
        return "retried" if moved else None

    async def _give_up(
        self,
        message: Message,
        exc: BaseException,
        attempt: int,
        reason: str,
        connection: Connection,
    ) -> MessageOutcome | None:
        dead_letter = self.dead_letter
        if dead_letter is None:
            logger.error(
                "%s: rejecting message %s (%s)",
                self.entrypoint, message.message_id, reason,
                exc_info=None if isinstance(exc, BadBody | Permanent) else exc,
            )  # fmt: skip
            message.reject(requeue=False)
            return None
        logger.error(
            "%s: dead-lettering message %s to queue %s (%s)",
            self.entrypoint, message.message_id, dead_letter.queue_name, reason,
            exc_info=None if isinstance(exc, BadBody | Permanent) else exc,
        )  # fmt: skip
        headers = dead_letter_headers(
            message,
            error_type="BadBody" if isinstance(exc, BadBody) else _type_name(exc),
            error_message=str(exc),
            attempts=attempt,
            service=self.service,
            entrypoint=self.entrypoint,
        )
        properties = copy_properties(message, headers, None)
        moved = await self._move(message, dead_letter.destination(), properties, connection)
        return "dead_lettered" if moved else None

    async def _move(
        self,
        message: Message,
        destination: Destination,
        properties: Properties,
        connection: Connection,
        fallback_wait: float = 1.0,
    ) -> bool:
        """Publish the copy (confirmed), then ack the original and return True; requeue
        the original on failure and return False."""
        outgoing = Outgoing(
            destination.exchange,
            destination.routing_key,
            message.body,
            properties,
            timeout=self.publish_timeout,
        )
        try:
            # Shielded: once the copy is out, the original must be acked (else it is
            # handled twice), even if the service is being cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                await self._publish(outgoing, destination, connection)
        except (PublishError, ConfigurationError) as exc:
            wait = min(max(fallback_wait, 0.1), MAX_FALLBACK_WAIT)
            logger.error(
                "%s: cannot move message %s to queue %s (%s); requeueing it in %.1fs",
                self.entrypoint, message.message_id, destination.routing_key, exc, wait,
            )  # fmt: skip
            await anyio.sleep(wait)
            if not message.settled:
                message.nack(requeue=True)
            return False
        message.ack()
        return True

    async def _publish(
        self, outgoing: Outgoing, destination: Destination, connection: Connection
    ) -> None:
        name = destination.topology.queues[0].name
        if name not in self._declared:
            await connection.declare(destination.topology)
            self._declared.add(name)
        try:
            await connection.publish(outgoing)
        except UnroutableError:
            # The queue was deleted since it was declared: declare it again, once.
            await connection.declare(destination.topology)
            await connection.publish(outgoing)


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _summary(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
