"""An idempotent consumer, as a user writes one."""

from __future__ import annotations

from typing import Any

import farine.amqp
from farine.connectors.sql import WithDatabase

from .models import Order


class Orders(WithDatabase):
    @farine.amqp.consume(exchange="orders", routing_key="placed", idempotent=True)
    def placed(self, body: dict[str, Any], message: farine.amqp.Message) -> None:
        Order.create(ref=body["ref"])
