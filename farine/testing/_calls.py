"""The record of every finished handler call of a running app, and waiting for calls."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import anyio

from farine._broker.message import Message
from farine.exceptions import ConfigurationError, FarineError

__all__ = ("CallLog", "CallRecord", "CallsNotSeen")


class CallsNotSeen(FarineError, AssertionError):
    """`App.wait_for()` timed out: fewer calls than expected finished (the message says
    how many did). An `AssertionError` too, so pytest shows it as a failed check."""

    __module__ = "farine.testing"  # where users import it from, as tracebacks show it


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One finished call of an entrypoint's handler.

    Attributes:
        entrypoint: `service.method`.
        args: The positional arguments the handler got (after `self`): `(body,
            message)` for a consumer, `(data,)` or `(data, event)` for an SSE listener,
            the call's arguments for an RPC method.
        kwargs: The keyword arguments (an RPC call's).
        result: What the handler returned (None when it raised).
        exception: What it raised, or None.
    """

    entrypoint: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any
    exception: Exception | None

    @property
    def body(self) -> Any:
        """The decoded body of a consumer's message (an SSE listener's data); None when
        the handler took no argument."""
        return self.args[0] if self.args else None

    @property
    def message(self) -> Message | None:
        """The `farine.amqp.Message` a consumer got, else None."""
        return next((arg for arg in self.args if isinstance(arg, Message)), None)


class CallLog:
    """Keeps the finished calls of each entrypoint and wakes whoever waits for them.

    Installed as the `observer` of every service of a `running()` block (see
    `farine.entrypoints.CallObserver`); it lives on the block's event loop.
    """

    def __init__(self, entrypoints: set[str]) -> None:
        self.entrypoints = entrypoints
        self._calls: dict[str, list[CallRecord]] = {}
        self._changed = anyio.Event()

    def call_finished(
        self,
        entrypoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        exception: Exception | None,
    ) -> None:
        """Record a finished call."""
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            return  # a stream starts here: recorded when it ends
        record = CallRecord(entrypoint, args, dict(kwargs), result, exception)
        self._calls.setdefault(entrypoint, []).append(record)
        self._changed.set()
        self._changed = anyio.Event()

    def calls(self, entrypoint: str) -> list[CallRecord]:
        """The finished calls of `entrypoint` so far, in the order they finished.

        Raises:
            ConfigurationError: No running service has that entrypoint.
        """
        self._check(entrypoint)
        return list(self._calls.get(entrypoint, ()))

    async def wait_for(
        self,
        entrypoint: str,
        count: int,
        timeout: float,  # noqa: ASYNC109  # raises CallsNotSeen, which says what was seen
    ) -> list[CallRecord]:
        """Wait until `entrypoint` finished `count` calls; return the first `count`.

        Raises:
            CallsNotSeen: Fewer calls finished within `timeout` seconds.
            ConfigurationError: No running service has that entrypoint.
        """
        self._check(entrypoint)
        if count < 1:
            raise ValueError(f"count must be >= 1, not {count}")
        with anyio.move_on_after(timeout):
            while len(self._calls.get(entrypoint, ())) < count:
                await self._changed.wait()
        seen = self._calls.get(entrypoint, [])
        if len(seen) < count:
            failed = sum(record.exception is not None for record in seen)
            raised = f" ({failed} raised)" if failed else ""
            raise CallsNotSeen(
                f"{entrypoint}: {len(seen)} of {count} call(s) finished within {timeout:g}s{raised}"
            )
        return seen[:count]

    def _check(self, entrypoint: str) -> None:
        if entrypoint not in self.entrypoints:
            known = ", ".join(sorted(self.entrypoints)) or "none"
            raise ConfigurationError(
                f"no entrypoint {entrypoint!r} is running (expected 'service.method'; "
                f"running: {known})"
            )
