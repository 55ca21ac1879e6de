"""The context of an RPC call, seen from inside the method, and passed on by its calls.

A server sets it around each call it handles (`serving`); a client reads it when it
makes a call (`outgoing`): the caller's headers go on with the nested call, and the
nested call's deadline is never later than its caller's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from farine.rpc._protocol import HEADER_CONTEXT, HEADER_DEADLINE

if TYPE_CHECKING:
    from farine._broker.message import Message

__all__ = ("CallContext", "check_headers", "context", "outgoing", "serving")


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a method knows about the call it is handling.

    Attributes:
        service: The service called.
        method: The method called.
        correlation_id: The call's correlation id (None from a fire-and-forget caller).
        headers: The headers the caller set (`client.with_headers()`), passed on by the
            calls this method makes in turn.
        deadline: When the caller stops waiting, in seconds since the epoch
            (`time.time()`); None when the caller set none (a baguette-messaging caller).
    """

    service: str
    method: str
    correlation_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    deadline: float | None = None

    def time_left(self) -> float | None:
        """Seconds left before the caller's deadline (0 once it passed); None: no deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())


_current: ContextVar[CallContext | None] = ContextVar("farine_rpc_context", default=None)


def context() -> CallContext:
    """Return the context of the RPC call being handled by the calling method.

    Works in `def` and `async def` methods, generators included, and in the functions
    they call.

    Raises:
        RuntimeError: Not called while handling an RPC call.

    Example:
        ```python
        @farine.rpc.method()
        def whoami(self) -> str:
            return farine.rpc.context().headers.get("user-id", "anonymous")
        ```
    """
    found = _current.get()
    if found is None:
        raise RuntimeError("farine.rpc.context() is only available inside an RPC method")
    return found


def _deadline(message: Message) -> float | None:
    raw = message.headers.get(HEADER_DEADLINE)
    if raw is None:
        return None
    try:
        value = float(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _headers(message: Message) -> dict[str, str]:
    table: Any = message.headers.get(HEADER_CONTEXT)
    if table is None or not isinstance(table, Mapping):  # None: skip the ABC's check
        return {}
    headers: dict[str, str] = {}
    for key, value in table.items():  # pyright: ignore[reportUnknownVariableType]
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(key, str) and isinstance(value, str):
            headers[key] = value
    return headers


class serving:
    """Make `message`'s call the current one in this task (and the threads it starts),
    for the `with` block."""

    __slots__ = ("_context", "_token")

    def __init__(self, service: str, method: str, message: Message) -> None:
        self._context = CallContext(
            service, method, message.correlation_id, _headers(message), _deadline(message)
        )
        self._token: Token[CallContext | None] | None = None

    def __enter__(self) -> None:
        self._token = _current.set(self._context)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return `headers` as a dict, checked to map strings to strings.

    Raises:
        TypeError: A key or value is not a string, or a key is empty.
    """
    checked: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"RPC headers map non-empty strings to strings, not {key!r}: {value!r}")
        checked[key] = value
    return checked


def outgoing(timeout: float, headers: Mapping[str, str]) -> tuple[float, Mapping[str, str]]:
    """The deadline (seconds from now) and headers of a call made now.

    Inside an RPC method, the call inherits the caller's headers (its own win) and its
    deadline is at most the time left to the caller.
    """
    current = _current.get()
    if current is None:
        return timeout, headers
    left = current.time_left()
    if left is not None and left < timeout:
        timeout = left
    if current.headers:
        headers = {**current.headers, **headers} if headers else current.headers
    return timeout, headers
