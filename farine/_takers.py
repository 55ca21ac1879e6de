"""Tasks that take messages from a consumer and handle them, as many as are busy."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import anyio.abc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractContextManager


__all__ = ("Takers",)

M = TypeVar("M")


class Takers(Generic[M]):
    """Take each message of `messages` and `handle()` it, at most `limit` at once.

    Each task takes the next message once it has handled one: no task is started per
    message. A task starts only when a message arrives while no other task is waiting
    for one (and fewer than `limit` run), and stays for the next ones: a consumer holds
    as many tasks as it has handled messages at once (one until its first message, or
    none with `start_in(group, on_demand=True)`), not one per prefetch slot.

    Args:
        messages: The consumer's messages; the takers end when it does.
        handle: Handles one message.
        limit: Most messages handled at once.
        scope: Entered by each task around its work (for example a context variable
            that its calls inherit).

    Example:
        ```python
        await Takers(consumer, handle_message, limit=64).run()
        ```
    """

    def __init__(
        self,
        messages: AsyncIterator[M],
        handle: Callable[[M], Awaitable[object]],
        *,
        limit: int,
        scope: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._messages = messages
        self._handle = handle
        self._limit = limit
        self._scope = scope
        self._tasks = 0
        self._waiting = 0
        self._group: anyio.abc.TaskGroup | None = None

    @property
    def tasks(self) -> int:
        """Tasks alive now (waiting for a message or handling one)."""
        return self._tasks

    async def run(self) -> None:
        """Take and handle messages until `messages` ends and every handler is done."""
        async with anyio.create_task_group() as group:
            self.start_in(group)

    def start_in(self, group: anyio.abc.TaskGroup, *, on_demand: bool = False) -> None:
        """Take and handle messages in tasks of `group`, which waits for them to end.

        Args:
            group: The task group the tasks run in.
            on_demand: Start no task now: the first starts at the first call of
                `wanted()`, which the source of the messages makes when one arrives.
        """
        self._group = group
        if not on_demand:
            self._start_task()

    def wanted(self) -> None:
        """Start a task if a message arrived that no task waits for (and fewer than `limit` run).

        Called by the source of the messages (on the takers' event loop), with
        `start_in(group, on_demand=True)`.
        """
        if self.wants_task():
            self._start_task()

    def wants_task(self) -> bool:
        """True when `wanted()` would start a task now."""
        return self._group is not None and not self._waiting and self._tasks < self._limit

    def _start_task(self) -> None:
        # Counted as waiting from now, before it first runs: a message taken meanwhile
        # by another task starts no second one.
        assert self._group is not None
        self._tasks += 1
        self._waiting += 1
        self._group.start_soon(self._take)

    async def _take(self) -> None:
        with self._scope():
            while True:  # counted as waiting here
                try:
                    message = await anext(self._messages)
                except StopAsyncIteration:
                    self._waiting -= 1
                    self._tasks -= 1
                    return
                self._waiting -= 1
                if not self._waiting and self._tasks < self._limit:
                    self._start_task()
                await self._handle(message)
                self._waiting += 1
