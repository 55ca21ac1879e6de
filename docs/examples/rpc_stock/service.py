"""A typed RPC server, `stock`, and a service calling it, `shop` (docs/rpc.md).

Run it from `docs/examples` with `farine start rpc_stock`: on memory:// (the default)
both services share the process; `stock` starts first, being defined first.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import anyio
import msgspec

import farine.execute
import farine.rpc
from farine.exceptions import RPCTimeout

logger = logging.getLogger(__name__)


class Reservation(msgspec.Struct):
    item: str
    quantity: int
    expires: datetime


class OutOfStock(Exception):
    """Fewer items are left than asked for: part of `reserve`'s contract."""

    def __init__(self, item: str, available: int) -> None:
        # Its args travel with it: the caller rebuilds it as `OutOfStock(item, available)`.
        super().__init__(item, available)
        self.item = item
        self.available = available

    def __str__(self) -> str:
        return f"only {self.available} {self.item} left"


class Stock:
    def __init__(self) -> None:
        self.levels = {"apple": 5, "pear": 0, "plum": 12}
        self.lock = threading.Lock()  # `def` methods run in worker threads, concurrently

    @farine.rpc.method(errors=(OutOfStock,))
    def reserve(self, item: str, quantity: int = 1) -> Reservation:
        with self.lock:
            available = self.levels.get(item, 0)
            if quantity > available:
                raise OutOfStock(item, available)
            self.levels[item] = available - quantity
        return Reservation(item, quantity, datetime.now(UTC) + timedelta(minutes=15))

    @farine.rpc.method()
    async def level(self, item: str) -> int:
        return self.levels.get(item, 0)

    @farine.rpc.method()
    async def inventory(self) -> dict[str, int]:
        await anyio.sleep(10)  # counting the shelves takes a while
        return dict(self.levels)


class Shop:
    @farine.execute.method(restart=False)
    @farine.rpc.client("stock")
    def buy(self, rpc: farine.rpc.Client) -> None:
        # A `def` method gets the blocking client: each call returns the result.
        reservation = rpc.reserve("apple", quantity=2)
        logger.info("reserved %(quantity)s %(item)s until %(expires)s", reservation)
        try:
            rpc.reserve("pear")
        except OutOfStock as exc:  # declared by `reserve`: re-raised as itself
            logger.info("no pear: %s (%s left)", exc, exc.available)

    @farine.execute.method(restart=False)
    @farine.rpc.client("stock", timeout=5)
    async def check(self, rpc: farine.rpc.AsyncClient) -> None:
        # An `async def` method gets the async client; calls run side by side.
        levels: dict[str, int] = {}

        async def level(item: str) -> None:
            levels[item] = await rpc.level(item)

        async with anyio.create_task_group() as tg:
            for item in ("pear", "plum"):
                tg.start_soon(level, item)
        logger.info("levels: %s", dict(sorted(levels.items())))
        try:
            await rpc.inventory(__timeout__=0.5)  # this call's own deadline
        except RPCTimeout as exc:
            logger.info("inventory: %s", exc)
