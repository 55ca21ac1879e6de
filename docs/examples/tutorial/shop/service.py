"""The shop: `orders` takes orders over RPC and announces them; `kitchen` cooks them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import msgspec

import farine.amqp
import farine.rpc
from farine.connectors.sql import WithDatabase

from .models import OrderRow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

MENU = ("soup", "bread", "pie")
OVEN = 10  # portions the kitchen cooks at once


class Order(msgspec.Struct):
    """What a customer orders: checked against these types before `place` runs."""

    item: str
    quantity: int = 1


class Placed(msgspec.Struct):
    """The event `orders` publishes for each order it accepts."""

    id: int
    item: str
    quantity: int


class NotOnTheMenu(Exception):
    """A declared error: the caller gets it back as itself."""

    def __init__(self, item: str) -> None:
        super().__init__(item)
        self.item = item


class Orders(WithDatabase):
    """Takes orders, stores them, and tells the kitchen."""

    @farine.rpc.method(errors=(NotOnTheMenu,))
    @farine.amqp.publish(exchange="shop", routing_key="order.placed")
    async def place(self, publish: farine.amqp.AsyncPublisher, order: Order) -> int:
        if order.item not in MENU:
            raise NotOnTheMenu(order.item)
        row = await self.db_run(OrderRow.create, item=order.item, quantity=order.quantity)
        await publish(Placed(id=row.id, item=order.item, quantity=order.quantity))
        log.info("order %d placed: %d %s", row.id, order.quantity, order.item)
        return row.id

    @farine.rpc.method()
    async def status(self, order_id: int) -> AsyncIterator[str]:
        """Stream the order's status each time it changes, until it is ready."""
        last = None
        while last != "ready":
            row = await self.db_run(OrderRow.get_by_id, order_id)
            if row.status != last:
                last = row.status
                yield last
            else:
                await anyio.sleep(0.05)


class Kitchen(WithDatabase):
    """Cooks each order it hears about."""

    @farine.amqp.consume(
        exchange="shop",
        routing_key="order.placed",
        # A failing call is tried again 0.2 s later, three calls in all; then the message
        # goes to the dead-letter queue `order.placed.dead` (step 8).
        retry=farine.amqp.Retry(attempts=3, backoff=0.2),
    )
    def cook(self, body: Placed, message: farine.amqp.Message) -> None:
        # `body` is decoded into its annotation. A `def` handler runs in a worker thread,
        # with a database connection of its own.
        if body.quantity > OVEN:
            raise ValueError(f"order {body.id}: {body.quantity} portions do not fit the oven")
        row = OrderRow.get_by_id(body.id)
        row.status = "cooking"
        row.save()
        log.info("cooking order %d: %d %s", body.id, body.quantity, body.item)
        row.status = "ready"
        row.save()
        log.info("order %d is ready", body.id)
