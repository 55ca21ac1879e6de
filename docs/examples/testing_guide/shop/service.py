"""The services the testing guide tests: a consumer, RPC methods (one streaming), an SSE
listener, and a service with a database."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

import farine.amqp
import farine.rpc
import farine.stream
from farine.connectors.sql import WithDatabase

from .models import Item

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from farine.amqp import AsyncPublisher, Message
    from farine.stream import Event

PRICES = {"plum": 3, "pear": 5}


class Order(msgspec.Struct):
    id: int
    item: str
    quantity: int


class Orders:
    """Sends an invoice for each order; rejects an empty one."""

    @farine.amqp.consume(exchange="orders", routing_key="created")
    @farine.amqp.publish(exchange="billing", routing_key="invoice")
    async def created(self, publish: AsyncPublisher, body: Order, message: Message) -> None:
        if body.quantity <= 0:
            message.reject()  # dead-lettered, if the queue has a dead-letter exchange
            return
        await publish({"order": body.id, "amount": PRICES[body.item] * body.quantity})


class Prices:
    """Answers prices, and streams a countdown of a price."""

    @farine.rpc.method()
    def price(self, item: str, quantity: int = 1) -> int:
        return PRICES[item] * quantity

    @farine.rpc.method()
    async def discounts(self, item: str, steps: int) -> AsyncIterator[int]:
        for step in range(steps):
            yield PRICES[item] * (10 - step)


class PriceUpdate(msgspec.Struct):
    item: str
    price: int


class Feed:
    """Keeps the latest price of each item, from a Server-Sent-Events stream."""

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}
        self.last_event_id: str | None = None

    @farine.stream.http(endpoint="https://prices.example.com/events")
    async def on_price(self, data: PriceUpdate, event: Event) -> None:
        self.latest[data.item] = data.price
        self.last_event_id = event.id


class Stock(WithDatabase):
    """Keeps stock levels in the database."""

    @farine.rpc.method()
    def receive(self, name: str, quantity: int) -> int:
        with self.db.atomic():  # pyright: ignore[reportUnknownMemberType]
            item = Item.get_or_none(name=name)
            if item is None:
                return Item.create(name=name, quantity=quantity).quantity
            item.quantity += quantity
            item.save()
            return item.quantity
