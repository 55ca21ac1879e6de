"""Typed RPC clients: what pyright (strict) must accept."""

from __future__ import annotations

from typing import Any, assert_type

import farine.rpc
from tests.pyright._api import Reservation, Stock, StockAPI, StockSyncAPI


async def typed_async() -> None:
    rpc = farine.rpc.AsyncClient[StockAPI]("stock", timeout=5, headers={"tenant": "acme"})
    assert_type(rpc, StockAPI)
    assert_type(await rpc.reserve("apple", quantity=2), Reservation)
    letters = [letter async for letter in rpc.letters("ab")]
    assert_type(letters, list[str])


def typed_blocking() -> None:
    rpc = farine.rpc.Client[StockSyncAPI]("stock", timeout=5)
    assert_type(rpc.reserve("apple"), Reservation)
    assert_type(list(rpc.letters("ab")), list[str])
    by_class = farine.rpc.Client[Stock]("stock")
    assert_type(by_class.reserve("pear", 1), Reservation)


async def untyped_as_before() -> None:
    rpc = farine.rpc.AsyncClient("stock")
    assert_type(rpc, farine.rpc.AsyncClient)
    assert_type(await rpc.anything(1, key=[2]), Any)
    rpc = rpc.with_headers({"user": "7"})
    async with farine.rpc.Client("stock") as conn:
        assert_type(await conn.reserve("apple"), Any)
    blocking = farine.rpc.Client("stock")
    assert_type(blocking.reserve("apple"), Any)
    for item in blocking.letters("ab", __stream__=True):
        assert_type(item, Any)
