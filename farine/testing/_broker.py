"""A test's view of a `memory://` broker: what waits in its queues, what was dead-lettered."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farine._broker.memory import MemoryBroker
    from farine._broker.message import Message

__all__ = ("BrokerView",)


class BrokerView:
    """Inspect the `memory://` broker of a `running()` block (`app.broker`).

    Messages are read in place: nothing is taken from a queue, and settling a message
    returned here does nothing.

    Example:
        ```python
        async with farine.testing.running(Orders) as app:
            await app.publish("orders", "created", {"id": 1})
            [record] = await app.wait_for("orders.created")
            assert app.broker.depth("created") == 0
        ```
    """

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    @property
    def uri(self) -> str:
        """The broker's URI (`memory://...`)."""
        return self._broker.name

    def messages(self, queue: str) -> list[Message]:
        """The messages ready in `queue` (not delivered yet, or requeued), oldest first."""
        return self._broker.ready_messages(queue)

    def depth(self, queue: str) -> int:
        """How many messages are ready in `queue` (0 when it does not exist)."""
        return self._broker.message_count(queue)

    def unacked(self, queue: str) -> int:
        """How many messages of `queue` were delivered and are not settled yet."""
        return self._broker.unacked_count(queue)

    def has_queue(self, queue: str) -> bool:
        """True when `queue` was declared (and not deleted)."""
        return self._broker.has_queue(queue)

    def has_exchange(self, exchange: str) -> bool:
        """True when `exchange` was declared."""
        return self._broker.has_exchange(exchange)

    def dead_letters(self, queue: str | None = None) -> list[Message]:
        """The messages rejected (without requeue) or expired in `queue` (in any queue
        when None) during the block, oldest first, whether or not the queue has a
        dead-letter exchange. Their `headers["x-death"]` says where from and why
        (`"rejected"`, `"expired"`), as RabbitMQ's do."""
        found = self._broker.dead_letters or []
        return [message for name, message in found if queue is None or name == queue]
