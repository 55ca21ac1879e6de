"""The deadlines of publishes waiting on the engine loop, kept by one timer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

logger = logging.getLogger("farine.amqp")


#: A publish deadline counts as passed this close to it (the loop may run a timer a
#: clock tick early).
_DEADLINE_SLACK: Final = 0.001


class PublishWatch:
    """The deadline of one publish (see `PublishDeadlines`): what it cancels at the deadline
    is the task of the publish, or the future of its confirm (`Engine.start_publish()`)."""

    __slots__ = ("cancelling", "deadline", "fired", "target")

    def __init__(self, target: asyncio.Future[Any], deadline: float) -> None:
        self.target = target
        self.deadline = deadline
        self.cancelling = target.cancelling() if isinstance(target, asyncio.Task) else 0
        self.fired = False

    def timed_out(self) -> bool:
        """On `CancelledError`: True when the deadline caused it (it is then absorbed).

        A cancellation from elsewhere, alone or with the deadline's, stays a cancellation.
        """
        if not self.fired:
            return False
        target = self.target
        return not isinstance(target, asyncio.Task) or target.uncancel() <= self.cancelling


class PublishDeadlines:
    """Deadlines of the publishes waiting on the engine loop, kept by one timer.

    `asyncio.timeout_at()` costs a timer of its own per publish, pushed onto and later
    removed from the loop's heap; with many publishes in flight that was a measurable
    share of a call. Here a publish only registers its task, and one timer, set for the
    earliest deadline, cancels the tasks whose deadline passed (`PublishWatch.timed_out()`
    then tells the publish it timed out, as `asyncio.timeout` does). Publishes made with
    the same timeout end in the order they began, so the timer rarely moves.
    (`farine._deadlines.Deadlines` does the same with an anyio task; the engine runs
    plain asyncio code, on a loop that trio drives on the trio backend.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watches: set[PublishWatch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._next = float("inf")

    def watch(self, deadline: float, target: asyncio.Future[Any] | None = None) -> PublishWatch:
        """Cancel `target` (default: the current task) at `deadline` unless `forget()`
        is called first."""
        if target is None:
            target = asyncio.current_task()
            assert target is not None, "publishes run in asyncio tasks"
        watch = PublishWatch(target, deadline)
        self._watches.add(watch)
        if deadline < self._next:
            self._arm(deadline)
        return watch

    def forget(self, watch: PublishWatch) -> None:
        self._watches.discard(watch)

    def now(self) -> float:
        """The loop's clock, which deadlines are on."""
        return self._loop.time()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._next = float("inf")

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._next = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._next = float("inf")
        now = self._loop.time() + _DEADLINE_SLACK
        earliest = float("inf")
        for watch in list(self._watches):
            if watch.deadline <= now:
                self._watches.discard(watch)
                watch.fired = True
                watch.target.cancel()
            elif watch.deadline < earliest:
                earliest = watch.deadline
        if earliest != float("inf"):
            self._arm(earliest)
