"""A typed SSE listener: price events decoded into a Struct, with the whole event."""

from __future__ import annotations

import logging

import msgspec

import farine.stream

logger = logging.getLogger(__name__)


class Price(msgspec.Struct):
    symbol: str
    amount: float


class Prices:
    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    @farine.stream.http(event_types=["price"])
    async def on_price(self, data: Price, event: farine.stream.Event) -> None:
        self.last[data.symbol] = data.amount
        logger.info("%s is now %s (event %s)", data.symbol, data.amount, event.id)
