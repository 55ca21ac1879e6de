"""Typed RPC clients: replies decoded into the API's return annotations, streams of typed
items, on memory:// and RabbitMQ, on both backends."""

from __future__ import annotations

import dataclasses

# Imported at run time: the typed client resolves the API's return annotations.
from collections.abc import AsyncIterator, Iterator  # noqa: TC003
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel
import msgspec
import pytest

import farine.rpc
from farine.exceptions import ConfigurationError
from tests.amqp.test_rpc import serve, unique

if TYPE_CHECKING:
    from tests.amqp.conftest import Broker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_script_loop")]


class Reservation(msgspec.Struct):
    item: str
    quantity: int


@dataclasses.dataclass
class Letter:
    char: str
    index: int


class Store:
    @farine.rpc.method()
    def reserve(self, item: str, quantity: int = 1) -> Reservation:
        return Reservation(item, quantity)

    @farine.rpc.method()
    async def many(self, n: int) -> list[Reservation]:
        return [Reservation(f"item{i}", i) for i in range(n)]

    @farine.rpc.method()
    def letters(self, word: str) -> Iterator[Letter]:
        for index, char in enumerate(word):
            yield Letter(char, index)

    @farine.rpc.method()
    async def aletters(self, word: str) -> AsyncIterator[Letter]:
        for index, char in enumerate(word):
            yield Letter(char, index)
            await anyio.lowlevel.checkpoint()

    @farine.rpc.method()
    def wrong(self) -> dict[str, Any]:
        return {"item": "x", "quantity": "lots"}


class StoreAPI(Protocol):
    """What callers from async code see of `Store`."""

    async def reserve(self, item: str, quantity: int = 1) -> Reservation: ...
    async def many(self, n: int) -> list[Reservation]: ...
    def letters(self, word: str) -> AsyncIterator[Letter]: ...
    def aletters(self, word: str) -> AsyncIterator[Letter]: ...
    async def wrong(self) -> Reservation: ...


class Unknowable(Protocol):
    async def odd(self) -> anyio.Event: ...


async def test_typed_async_client_decodes_replies_into_the_annotations(broker: Broker) -> None:
    svc = unique(Store, broker)
    name = svc.__name__
    async with serve(svc, broker=broker):
        rpc = farine.rpc.AsyncClient[StoreAPI](name, timeout=30)
        assert await rpc.reserve("pear", 2) == Reservation("pear", 2)
        assert await rpc.many(2) == [Reservation("item0", 0), Reservation("item1", 1)]
        # Stream methods stream without `__stream__`, and yield typed items.
        assert [letter async for letter in rpc.letters("ab")] == [Letter("a", 0), Letter("b", 1)]
        assert [letter async for letter in rpc.aletters("c")] == [Letter("c", 0)]
        # The untyped client of the same service gets JSON values.
        untyped = farine.rpc.AsyncClient(name, timeout=30)
        assert await untyped.reserve("pear", 2) == {"item": "pear", "quantity": 2}


async def test_a_reply_that_does_not_match_the_annotation_names_the_field(
    broker: Broker,
) -> None:
    svc = unique(Store, broker)
    async with serve(svc, broker=broker):
        rpc = farine.rpc.AsyncClient[StoreAPI](svc.__name__, timeout=30)
        with pytest.raises(
            farine.rpc.RemoteError, match=r"Expected `int`, got `str` - at `\$\.quantity`"
        ):
            await rpc.wrong()
        assert await rpc.reserve("plum") == Reservation("plum", 1)  # the client still works


async def test_blocking_client_typed_with_the_service_class(broker: Broker) -> None:
    svc = unique(Store, broker)
    name = svc.__name__

    def script() -> tuple[Reservation, list[Letter]]:
        rpc = farine.rpc.Client[Store](name, timeout=30)
        return rpc.reserve("fig"), list(rpc.letters("xy"))

    async with serve(svc, broker=broker):
        reservation, letters = await anyio.to_thread.run_sync(script)
    assert reservation == Reservation("fig", 1)
    assert letters == [Letter("x", 0), Letter("y", 1)]


async def test_a_return_type_msgspec_cannot_decode_is_a_configuration_error(
    broker: Broker,
) -> None:
    svc = unique(Store, broker)
    async with serve(svc, broker=broker):
        rpc = farine.rpc.AsyncClient[Unknowable](svc.__name__, timeout=30)
        with pytest.raises(ConfigurationError, match=r"Unknowable\.odd: msgspec cannot decode"):
            await rpc.odd()
