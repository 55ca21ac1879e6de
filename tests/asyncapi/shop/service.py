"""Services with one of each thing `farine asyncapi` describes, typed and untyped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

import farine.amqp
import farine.execute
import farine.rpc
import farine.stream
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


DEFAULTS = Config.from_string("")


class Order(msgspec.Struct):
    id: int
    item: str
    size: tuple[int, str] = (1, "unit")


class Shipped(msgspec.Struct, tag=True):
    order: int


class Cancelled(msgspec.Struct, tag=True):
    order: int
    reason: str


class Receipt(msgspec.Struct):
    order: int
    total: float


class Tick(msgspec.Struct):
    n: int


class SoldOut(Exception):
    """Not enough of an item left."""

    def __init__(self, item: str, left: int) -> None:
        super().__init__(item, left)


class Shop:
    """Takes orders over AMQP and RPC."""

    audit = farine.amqp.Publisher(
        "audit",
        ["orders", "all"],
        exchange_type="fanout",
        settings=Config.from_string("").service("x"),
    )

    @farine.amqp.consume(
        exchange="orders",
        routing_key=["order.created", "order.updated"],
        exchange_type="topic",
        queue="shop-orders",
        queue_arguments={"x-dead-letter-exchange": "dead"},
    )
    def on_order(self, body: Order, message: farine.amqp.Message) -> None:
        """Record an order."""

    @farine.amqp.consume(exchange="orders", routing_key="order.event")
    async def on_event(self, body: Shipped | Cancelled, message: farine.amqp.Message) -> None:
        pass

    @farine.amqp.consume()
    def on_anything(self, body, message):  # type: ignore[no-untyped-def]
        pass

    @farine.amqp.consume(routing_key="mapping")
    def on_mapping(self, counts: dict[str, int], message: farine.amqp.Message) -> None:
        pass

    @farine.rpc.method(errors=(SoldOut,))
    def quote(self, order: Order, quantity: int = 1, *, coupon: str | None = None) -> Receipt:
        """Price an order."""
        return Receipt(order.id, 1.0 * quantity)

    @farine.rpc.method()
    def tally(self, *numbers: int, **labels: str) -> int:
        return sum(numbers)

    @farine.rpc.method()
    async def follow(self, order: int) -> AsyncIterator[Shipped | Cancelled]:
        yield Shipped(order)

    @farine.rpc.method()
    def letters(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        yield "a"

    @farine.rpc.method()
    def positions(self, a: int, /, b: Literal["x", "y"]) -> Iterator[int]:
        yield a

    @staticmethod
    @farine.rpc.method()
    def echo(word: str) -> str:
        return word

    @farine.execute.method()
    @farine.amqp.publish(exchange="orders", routing_key=["order.created", "order.updated"])
    @farine.amqp.publish(exchange="stock")
    def restock(self, stock: farine.amqp.Publisher, orders: farine.amqp.Publisher) -> None:
        # The inner decorator injects the first publisher, the outer one the second.
        pass


class Feed:
    """Listens to a stream whose URL holds credentials."""

    @farine.stream.http(
        endpoint="https://user:s3cret@feed.example:8443/events?token=t0ken#frag",
        event_types=["tick"],
    )
    def on_tick(self, data: Tick) -> None:
        pass

    @farine.stream.http()
    def on_setting(self, data):  # type: ignore[no-untyped-def]
        pass
