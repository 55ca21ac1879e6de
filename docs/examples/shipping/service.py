"""Ship each order once, however often its message is delivered."""

from __future__ import annotations

import logging
from typing import Any

import farine.amqp
import farine.execute
from farine.connectors.sql import WithDatabase

from .models import Shipment

log = logging.getLogger(__name__)


class Shipping(WithDatabase):
    @farine.amqp.consume(
        exchange="orders",
        routing_key="placed",
        timeout=10,  # a call that takes longer fails (and is retried)
        max_concurrency=4,  # four at once, however large the prefetch
        idempotent=True,  # each message id is processed once
    )
    def ship(self, body: dict[str, Any], message: farine.amqp.Message) -> None:
        # Runs in one transaction with the inbox row: both commit, or neither.
        Shipment.create(order=body["order"])
        log.info("shipped %s (%d shipment(s) so far)", body["order"], Shipment.select().count())

    @farine.execute.method(restart=False)
    @farine.amqp.publish(exchange="orders", routing_key="placed")
    def place_orders(self, publish: farine.amqp.Publisher) -> None:
        publish({"order": "A-1"}, message_id="order-A-1")
        publish({"order": "B-2"}, message_id="order-B-2")
        # The same message again, as a redelivery after a crash would bring it.
        publish({"order": "A-1"}, message_id="order-A-1")
