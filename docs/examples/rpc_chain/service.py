"""Typed clients, a declared error, and a tenant carried through a call chain (docs/rpc.md).

`front` calls `orders`, which calls `inventory`. Run it from `docs/examples` with
`farine start rpc_chain`: on memory:// (the default) the three share the process.
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec

import farine.execute
import farine.rpc

logger = logging.getLogger(__name__)


class Order(msgspec.Struct):
    item: str
    quantity: int
    tenant: str


class SoldOut(Exception):
    """Part of `orders.place`'s contract: callers catch it as `SoldOut`."""

    def __init__(self, item: str, left: int) -> None:
        super().__init__(item, left)
        self.item = item
        self.left = left

    def __str__(self) -> str:
        return f"only {self.left} {self.item} left"


class InventoryAPI(Protocol):
    async def count(self, item: str) -> int: ...


class OrdersAPI(Protocol):
    async def place(self, item: str, quantity: int) -> Order: ...


class Inventory:
    @farine.rpc.method()
    async def count(self, item: str) -> int:
        call = farine.rpc.context()
        logger.info(
            "inventory: tenant %s counts %s (%.0fs left)",
            call.headers.get("tenant"), item, call.time_left(),
        )  # fmt: skip
        return 3


class Orders:
    @farine.rpc.method(errors=(SoldOut,))
    async def place(self, item: str, quantity: int) -> Order:
        tenant = farine.rpc.context().headers["tenant"]
        # This call carries the caller's headers on, and its deadline is at most what
        # is left of the caller's (5 s), whatever its own timeout says.
        inventory = farine.rpc.AsyncClient[InventoryAPI]("inventory", timeout=60)
        left = await inventory.count(item)
        if quantity > left:
            raise SoldOut(item, left)
        return Order(item, quantity, tenant)


class Front:
    @farine.execute.method(restart=False)
    async def shop(self) -> None:
        orders = farine.rpc.AsyncClient[OrdersAPI]("orders", timeout=5, headers={"tenant": "acme"})
        order = await orders.place("apple", 2)  # an `Order`, decoded from the reply
        logger.info("front: placed %s x %s for %s", order.quantity, order.item, order.tenant)
        try:
            await orders.place("apple", 5)
        except SoldOut as exc:
            logger.info("front: sold out: %s left of %s", exc.left, exc.item)
