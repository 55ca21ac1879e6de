"""The APIs the typing checks use: a service, and the protocols its callers write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import msgspec

import farine.rpc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


class Reservation(msgspec.Struct):
    item: str
    quantity: int


class Stock:
    """A service: a `Client[Stock]` types calls from its own (`def`) methods."""

    @farine.rpc.method()
    def reserve(self, item: str, quantity: int = 1) -> Reservation:
        return Reservation(item, quantity)

    @farine.rpc.method()
    def letters(self, word: str) -> Iterator[str]:
        yield from word


class StockAPI(Protocol):
    """What async callers see of `Stock`."""

    async def reserve(self, item: str, quantity: int = 1) -> Reservation: ...
    def letters(self, word: str) -> AsyncIterator[str]: ...


class StockSyncAPI(Protocol):
    """What blocking callers see of `Stock`."""

    def reserve(self, item: str, quantity: int = 1) -> Reservation: ...
    def letters(self, word: str) -> Iterator[str]: ...
