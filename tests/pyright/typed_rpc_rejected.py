# pyright: reportUnnecessaryTypeIgnoreComment=true
"""Typed RPC clients: what pyright (strict) must reject.

Each wrong line carries the ignore comment of the error pyright must report; with
`reportUnnecessaryTypeIgnoreComment` on, a line that stopped failing fails the check.
"""

from __future__ import annotations

import farine.rpc
from tests.pyright._api import Stock, StockAPI, StockSyncAPI


async def wrong_async() -> None:
    rpc = farine.rpc.AsyncClient[StockAPI]("stock")
    await rpc.reserve(3)  # pyright: ignore[reportArgumentType]
    await rpc.reserve("apple", quantity="two")  # pyright: ignore[reportArgumentType]
    await rpc.restock("apple")  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    count: int = await rpc.reserve("apple")  # pyright: ignore[reportAssignmentType]
    letters: list[int] = [letter async for letter in rpc.letters("ab")]  # pyright: ignore[reportAssignmentType]
    del count, letters


def wrong_blocking() -> None:
    rpc = farine.rpc.Client[StockSyncAPI]("stock")
    rpc.reserve()  # pyright: ignore[reportCallIssue]
    rpc.reserve("apple", 1, 2)  # pyright: ignore[reportCallIssue]
    by_class = farine.rpc.Client[Stock]("stock")
    by_class.letter("ab")  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    total: str = by_class.reserve("apple").quantity  # pyright: ignore[reportAssignmentType]
    del total
