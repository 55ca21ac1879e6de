"""The limits of an entrypoint's handler calls: a time limit and a cap on calls at once.

Every entrypoint that takes work from outside (consumers, RPC methods, SSE listeners)
builds one `CallLimits` when it is bound and runs each handler call through it. The
time limit is a cancel scope around the call, opened in the entrypoint's task, so it is
nested in the entrypoint's own scope (and in its service's): whichever deadline comes
first wins. The cap is the number of tasks that take messages (`farine._takers`), so a
message beyond it waits in the consumer's prefetch buffer, not in a task.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

import anyio

from farine.exceptions import ConfigurationError, HandlerTimeout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from farine.settings import ServiceSettings

__all__ = ("RABBITMQ_CONSUMER_TIMEOUT", "CallLimits", "check_max_concurrency", "check_timeout")

logger = logging.getLogger("farine.runtime")

P = ParamSpec("P")
R = TypeVar("R")

#: RabbitMQ's default `consumer_timeout` (seconds): a consumer holding a message longer
#: has its channel closed (and the message requeued).
RABBITMQ_CONSUMER_TIMEOUT: Final = 1800.0

_CONSUMER_TIMEOUT_ARGUMENT: Final = "x-consumer-timeout"


def check_timeout(name: str, value: object, *, zero: bool = False) -> None:
    """Check a decorator's time limit: None, a number of seconds > 0, or `math.inf`.

    Args:
        name: The argument's name, for the error.
        value: Its value.
        zero: Accept 0 too.

    Raises:
        ConfigurationError: The value is not one of those.
    """
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 if zero else value > 0)
    ):
        floor = ">= 0" if zero else "> 0"
        raise ConfigurationError(
            f"{name} must be a number of seconds {floor} (math.inf: no limit), not {value!r}"
        )


def check_max_concurrency(value: object) -> None:
    """Check a decorator's `max_concurrency`: None or an integer >= 1.

    Raises:
        ConfigurationError: The value is not one of those.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"max_concurrency must be an integer >= 1, not {value!r}")


@dataclass(frozen=True, slots=True)
class CallLimits:
    """The time limit and concurrency cap of one entrypoint's handler calls.

    Attributes:
        where: The entrypoint (`service.method`), named in errors and log lines.
        timeout: Seconds a call may run; None for no limit.
        max_concurrency: Calls running at once; None for as many as are prefetched.

    Example:
        ```python
        limits = CallLimits.resolve("svc.handle", settings, timeout=5.0, max_concurrency=4)
        call = limits.applied_to(service.call)
        result = await call(handler, body, message)
        ```
    """

    where: str
    timeout: float | None = None
    max_concurrency: int | None = None

    @classmethod
    def resolve(
        cls,
        where: str,
        settings: ServiceSettings,
        *,
        timeout: float | None,
        max_concurrency: int | None = None,
    ) -> CallLimits:
        """The limits of an entrypoint: the decorator's values, else the settings'.

        Args:
            where: The entrypoint (`service.method`).
            settings: Its service's settings (`handler_timeout`, `max_concurrency`).
            timeout: The decorator's time limit (None: the setting; `math.inf`: none).
            max_concurrency: The decorator's cap (None: the setting).
        """
        limit = settings.handler_timeout if timeout is None else timeout
        if limit is not None and math.isinf(limit):
            limit = None
        cap = settings.max_concurrency if max_concurrency is None else max_concurrency
        return cls(where, limit, cap)

    def tasks(self, prefetch: int) -> int:
        """How many tasks take messages at once, given the entrypoint's prefetch."""
        if self.max_concurrency is None:
            return prefetch
        return min(prefetch, self.max_concurrency)

    def describe(self) -> str:
        """The limits for an entrypoint's start-up log line (empty when there are none)."""
        parts = [] if self.timeout is None else [f"timeout {self.timeout:g}s"]
        if self.max_concurrency is not None:
            parts.append(f"max_concurrency {self.max_concurrency}")
        return "".join(f", {part}" for part in parts)

    def applied_to(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """`func` with the time limit on each call: `func` itself when there is none, so
        an entrypoint without a limit pays nothing per call.

        Example:
            ```python
            self.call = limits.applied_to(service.call)  # once, when bound
            await self.call(handler, body, message)  # per message
            ```
        """
        if self.timeout is None:
            return func

        async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self.call(func, *args, **kwargs)

        return limited

    async def call(
        self, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await `func(*args, **kwargs)` within the time limit and return its result.

        The call runs in a cancel scope whose deadline is the time limit: an `async def`
        handler is cancelled there; a `def` one, whose worker thread cannot be
        interrupted, is abandoned (it finishes on its own and its result is dropped), as
        when the shutdown grace period ends. A deadline of an enclosing scope (the RPC
        caller's, the shutdown's) still applies: the earlier one wins.

        Raises:
            HandlerTimeout: The call ran past the time limit.
        """
        if self.timeout is None:
            return await func(*args, **kwargs)
        with anyio.CancelScope(deadline=anyio.current_time() + self.timeout):
            return await func(*args, **kwargs)
        # Reached only when this scope's own deadline cancelled the call.
        logger.warning(
            "%s: a call ran past its time limit of %gs: stopped (a `def` handler's thread "
            "is abandoned and finishes on its own)",
            self.where, self.timeout,
        )  # fmt: skip
        raise HandlerTimeout(f"{self.where} ran past its time limit of {self.timeout:g}s")

    def check_consumer_timeout(
        self, settings: ServiceSettings, queue: str, arguments: Mapping[str, Any] | None = None
    ) -> None:
        """Warn when the time limit exceeds what the broker lets a consumer hold a message.

        RabbitMQ closes the channel of a consumer that holds a message longer than its
        `consumer_timeout`. The one a queue declares (`x-consumer-timeout`) is read from
        `arguments`; otherwise RabbitMQ's default (30 minutes) is assumed, unless the
        broker is `memory://`, which has none.

        Args:
            settings: The service's settings (`amqp_uri`).
            queue: The queue the entrypoint consumes.
            arguments: The queue's declared arguments, if any.
        """
        if self.timeout is None or settings.amqp_uri.startswith("memory:"):
            return
        declared = (arguments or {}).get(_CONSUMER_TIMEOUT_ARGUMENT)
        if isinstance(declared, int | float) and not isinstance(declared, bool):
            broker_limit, source = declared / 1000, f"{_CONSUMER_TIMEOUT_ARGUMENT} of the queue"
        else:
            broker_limit, source = RABBITMQ_CONSUMER_TIMEOUT, "RabbitMQ's default consumer_timeout"
        if self.timeout > broker_limit:
            logger.warning(
                "%s: its time limit (%gs) exceeds the %gs the broker lets a consumer hold a "
                "message (%s, queue %r): a call that long would have its channel closed and "
                "its message redelivered; lower timeout= or raise the broker's limit",
                self.where, self.timeout, broker_limit, source, queue,
            )  # fmt: skip
