"""The testing guide's tests of the `shop` services (docs/testing.md)."""

from __future__ import annotations

from unittest.mock import AsyncMock

import pytest
from shop.models import Item
from shop.service import Feed, Order, Orders, Prices, Stock

import farine.amqp
import farine.testing
from farine.connectors.sql import SqliteDatabase
from farine.stream import Event

pytestmark = pytest.mark.anyio


class Billing:
    """Stands in for the billing service: consumes the invoices `Orders` sends."""

    @farine.amqp.consume(exchange="billing", routing_key="invoice")
    def invoice(self, body: dict[str, int], message: farine.amqp.Message) -> None:
        pass


async def test_an_order_sends_an_invoice() -> None:
    async with farine.testing.running(Orders, Billing) as app:
        await app.publish("orders", "created", {"id": 7, "item": "plum", "quantity": 2})
        [invoice] = await app.wait_for("billing.invoice")
    assert invoice.body == {"order": 7, "amount": 6}


async def test_an_empty_order_is_rejected() -> None:
    async with farine.testing.running(Orders, Billing) as app:
        await app.publish("orders", "created", {"id": 8, "item": "plum", "quantity": 0})
        [call] = await app.wait_for("orders.created")
        assert call.exception is None
        assert call.message is not None
        assert call.message.outcome == "reject"
        assert app.calls("billing.invoice") == []
        assert app.broker is not None  # memory:// (None on RabbitMQ)
        [rejected] = app.broker.dead_letters("created")
    assert rejected.payload == {"id": 8, "item": "plum", "quantity": 0}


async def test_price() -> None:
    async with farine.testing.running(Prices) as app:
        assert await app.rpc("prices").price("pear", quantity=2) == 10
        [call] = await app.wait_for("prices.price")
    assert call.args == ("pear", 2)


async def test_discounts_stream() -> None:
    async with farine.testing.running(Prices) as app:
        stream = app.rpc("prices").discounts("plum", 3, __stream__=True)
        assert [price async for price in stream] == [30, 27, 24]


async def test_feed_keeps_the_latest_prices() -> None:
    events = [
        Event(type="price", data='{"item": "plum", "price": 3}', id="1"),
        {"item": "plum", "price": 4},  # sent as JSON data
        Event(type="price", data='{"item": "pear", "price": 6}', id="2"),
    ]
    transport = farine.testing.sse_transport(events)
    async with farine.testing.running(Feed, http_transport=transport) as app:
        await app.wait_for("feed.on_price", count=3)
        feed: Feed = app.instance("feed")
        assert feed.latest == {"plum": 4, "pear": 6}
        assert feed.last_event_id == "2"
    assert str(transport.requests[0].url) == "https://prices.example.com/events"


async def test_created_publishes_an_invoice() -> None:
    publish = AsyncMock()
    worker = farine.testing.worker_factory(Orders, publish=publish)
    message = farine.testing.message({"id": 7, "item": "pear", "quantity": 1})
    await worker.created(Order(id=7, item="pear", quantity=1), message)
    publish.assert_awaited_once_with({"order": 7, "amount": 5})
    assert not message.settled  # left to the ack policy: acked when it returns


async def test_an_empty_order_publishes_nothing() -> None:
    worker = farine.testing.worker_factory(Orders)  # `publish` is a mock: worker.publish
    message = farine.testing.message({"id": 8, "item": "pear", "quantity": 0})
    await worker.created(Order(id=8, item="pear", quantity=0), message)
    assert message.outcome == "reject"
    assert message.requeued is False


def test_receive_adds_to_the_stock() -> None:
    db = SqliteDatabase(":memory:")
    with db.connection_context(), db.bind_ctx([Item]):
        db.create_tables([Item])  # pyright: ignore[reportUnknownMemberType]
        worker = farine.testing.worker_factory(Stock, db=db)
        assert worker.receive("plum", 5) == 5
        assert worker.receive("plum", 2) == 7
        assert Item.get(name="plum").quantity == 7
