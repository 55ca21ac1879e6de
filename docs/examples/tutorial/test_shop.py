"""The tutorial's tests: each service in-process, on memory:// (`pytest` in this folder)."""

from __future__ import annotations

import pytest
from shop.service import Kitchen, NotOnTheMenu, Order, Orders, Placed

import farine.testing
from farine.connectors.sql import migrate

pytestmark = pytest.mark.anyio


async def test_an_order_is_placed_cooked_and_ready() -> None:
    migrate("shop")  # the tables, in the test's SQLite file
    async with farine.testing.running(Orders, Kitchen) as app:
        orders = app.rpc("orders")
        order_id = await orders.place(Order(item="soup", quantity=2))
        [cooked] = await app.wait_for("kitchen.cook")
        assert cooked.exception is None
        assert cooked.args[0] == Placed(id=order_id, item="soup", quantity=2)
        statuses = [status async for status in orders.status(order_id, __stream__=True)]
    assert statuses[-1] == "ready"


async def test_an_item_not_on_the_menu_is_refused() -> None:
    migrate("shop")
    async with farine.testing.running(Orders) as app:
        with pytest.raises(NotOnTheMenu) as refused:
            await app.rpc("orders").place(Order(item="cake"))
        assert app.calls("orders.place")[0].exception is not None
    assert refused.value.item == "cake"


async def test_an_order_too_big_for_the_oven_is_tried_three_times() -> None:
    migrate("shop")
    async with farine.testing.running(Orders, Kitchen) as app:
        await app.rpc("orders").place(Order(item="pie", quantity=12))
        calls = await app.wait_for("kitchen.cook", count=3)
    assert [str(call.exception) for call in calls] == [
        "order 1: 12 portions do not fit the oven"
    ] * 3
