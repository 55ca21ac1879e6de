"""Deadlines of many things at once, kept by one task instead of a timer each."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Generic, NoReturn, TypeVar

import anyio

from farine._broker import loops

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("Deadlines",)

T = TypeVar("T")


class Deadlines(Generic[T]):
    """Calls `expired(item)` once the deadline of an item added passed.

    A cancel scope with a deadline costs a timer on the event loop, set and then
    removed, and anyio's bookkeeping: for short RPC calls, a measurable share. Here
    `run()`, one task, sleeps until the earliest deadline and looks again. Items added
    with the same timeout expire in the order they were added, so that task mostly
    wakes at the deadline of an item long gone, and goes back to sleep; an item with
    an earlier deadline than every other one wakes it at once.

    Every method runs on the event loop of `run()`'s task; deadlines are on its clock
    (`anyio.current_time()`, or `farine._broker.loops.now()`, the same for less).

    Args:
        expired: Called with each item whose deadline passed (it is removed first).
    """

    __slots__ = ("_changed", "_expired", "_items", "_next")

    def __init__(self, expired: Callable[[T], object]) -> None:
        self._expired = expired
        self._items: dict[T, float] = {}
        self._next = math.inf
        self._changed = anyio.Event()

    def add(self, item: T, deadline: float) -> None:
        """Expire `item` at `deadline` unless it is discarded first."""
        self._items[item] = deadline
        if deadline < self._next:
            self._changed.set()

    def discard(self, item: T) -> None:
        """Forget `item` (no error if it expired already)."""
        self._items.pop(item, None)

    async def run(self) -> NoReturn:
        """Expire items as their deadlines pass, until cancelled."""
        while True:
            now = loops.now()
            earliest = math.inf
            for item, deadline in list(self._items.items()):
                if deadline <= now:
                    del self._items[item]
                    self._expired(item)
                elif deadline < earliest:
                    earliest = deadline
            self._next = earliest
            self._changed = anyio.Event()
            with anyio.move_on_after(earliest - now):
                await self._changed.wait()
