"""Retries with backoff and a dead-letter queue (docs/delivery.md).

Run it from `docs/examples` with `farine start delivery`: on memory:// (the default) the
orders are published, retried and dead-lettered in the process.
"""

from __future__ import annotations

import logging
from typing import Any

import farine.amqp
import farine.execute

logger = logging.getLogger(__name__)


class Orders:
    def __init__(self) -> None:
        self.warehouse_up = False

    @farine.amqp.consume(
        exchange="orders",
        routing_key="placed",
        retry=farine.amqp.Retry(attempts=4, backoff=farine.amqp.Backoff(initial=0.2, cap=1)),
        dead_letter="orders.failed",
    )
    def on_order(self, body: dict[str, Any], message: farine.amqp.Message) -> None:
        if body["quantity"] < 1:
            # Retrying cannot fix it: dead-lettered at once.
            raise farine.amqp.Permanent(f"order {body['id']}: quantity must be >= 1")
        if not self.warehouse_up:
            self.warehouse_up = True  # it is back for the next attempt
            raise ConnectionError("the warehouse is restarting")
        logger.info("order %s saved", body["id"])

    # Dead letters go to `placed.dead`, and to anyone bound to `orders.failed` with the
    # work queue's name: here, an audit log.
    @farine.amqp.consume(exchange="orders.failed", routing_key="placed", queue="orders.audit")
    def on_failed(self, body: dict[str, Any], message: farine.amqp.Message) -> None:
        headers = message.headers
        logger.info(
            "order %s failed after %s attempt(s): %s: %s",
            body["id"],
            headers["x-farine-attempts"],
            headers["x-farine-error-type"],
            headers["x-farine-error-message"],
        )

    @farine.execute.method(restart=False)
    @farine.amqp.publish(exchange="orders", routing_key="placed")
    def place(self, publish: farine.amqp.Publisher) -> None:
        publish({"id": 1, "quantity": 2})
        publish({"id": 2, "quantity": 0})
