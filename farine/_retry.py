"""Retry policies: which failures are retried, how often, after how long.

Shared by the consumers (`farine.amqp`, which exports the public names) and the SSE
listener (`farine.stream`).
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, cast

from farine._broker.errors import BrokerUnavailable, PublishError, UnroutableError
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = (
    "DELAY_LEVELS",
    "Backoff",
    "Permanent",
    "Retry",
    "Retryable",
    "delay_level",
    "is_transient",
)


class Retryable(Exception):  # a marker users raise or subclass, not an "Error"
    """A failure worth retrying later: raise it (or subclass it) to mark one.

    Example:
        ```python
        try:
            reply = fetch(url)
        except MyClientError as exc:
            raise farine.amqp.Retryable("the catalogue is down") from exc
        ```
    """

    __module__ = "farine.amqp"  # its public home, shown in logs and dead letters


class Permanent(Exception):  # a marker users raise or subclass, not an "Error"
    """A failure that retrying cannot fix: the message goes to the dead-letter queue at once.

    Example:
        ```python
        if body["quantity"] < 0:
            raise farine.amqp.Permanent("negative quantity")
        ```
    """

    __module__ = "farine.amqp"  # its public home, shown in logs and dead letters


def _optional_types(module: str, *names: str) -> tuple[type[BaseException], ...]:
    # An exception of a library's type exists only if the library was imported: looking
    # in sys.modules keeps peewee, psycopg2 and httpx optional here.
    found = sys.modules.get(module)
    if found is None:
        return ()
    types: list[type[BaseException]] = []
    for name in names:
        value: object = getattr(found, name, None)
        if isinstance(value, type) and issubclass(value, BaseException):
            types.append(value)
    return tuple(types)


def is_transient(exc: BaseException) -> bool:
    """Return True when `exc` is a failure that may go away if tried again later.

    Transient: `farine.amqp.Retryable`; `OSError` (so `ConnectionError` and
    `TimeoutError`, also raised by a handler over its time limit); the connection and
    timeout errors of the database (peewee, psycopg2, sqlite3's "database is locked",
    a full connection pool), of httpx (`httpx.TransportError`) and of the AMQP client
    (`PublishError` other than `UnroutableError`, `BrokerUnavailable`). Everything else
    is permanent, `farine.amqp.Permanent` first of all.

    Example:
        ```python
        farine.amqp.is_transient(ConnectionRefusedError())  # True
        farine.amqp.is_transient(KeyError("id"))  # False
        ```
    """
    if isinstance(exc, Permanent):
        return False
    if isinstance(exc, Retryable | OSError | BrokerUnavailable):
        return True
    if isinstance(exc, PublishError):
        return not isinstance(exc, UnroutableError)
    transient = (
        _optional_types("peewee", "OperationalError", "InterfaceError")
        + _optional_types("psycopg2", "OperationalError", "InterfaceError")
        + _optional_types("sqlite3", "OperationalError")
        + _optional_types("playhouse.pool", "MaxConnectionsExceeded")
        + _optional_types("httpx", "TransportError")
    )
    return isinstance(exc, transient)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays between attempts: `initial * factor**n`, capped, with jitter.

    With jitter, each delay is drawn in the upper half of its nominal value ("equal
    jitter"), so that messages that failed together do not all come back together.

    Attributes:
        initial: Delay in seconds before the first retry.
        factor: Growth of the delay from one retry to the next.
        cap: Longest delay in seconds.
        jitter: Draw each delay in [delay / 2, delay].

    Example:
        ```python
        farine.amqp.Retry(attempts=8, backoff=farine.amqp.Backoff(initial=0.5, cap=30))
        ```
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.cap >= 0 and self.factor >= 1):
            raise ConfigurationError("Backoff needs initial >= 0, cap >= 0 and factor >= 1")

    def nominal(self, retry: int) -> float:
        """The delay before retry number `retry` (1 for the first), before jitter."""
        return min(self.cap, self.initial * self.factor ** min(retry - 1, 64))


@dataclass(frozen=True, slots=True)
class _Delays:
    """Fixed delays: the n-th retry waits the n-th one, the last one repeated."""

    delays: tuple[float, ...]
    jitter: bool = False

    def nominal(self, retry: int) -> float:
        return self.delays[min(retry, len(self.delays)) - 1]


def _as_delays(backoff: Backoff | float | Sequence[float]) -> Backoff | _Delays:
    if isinstance(backoff, Backoff):
        return backoff
    if isinstance(backoff, int | float):
        delays: tuple[float, ...] = (float(backoff),)
    else:
        delays = tuple(float(delay) for delay in backoff)
    if not delays or any(not (delay >= 0) or math.isinf(delay) for delay in delays):
        raise ConfigurationError(
            "backoff must be a Backoff, a number of seconds >= 0, or a non-empty list of them"
        )
    return _Delays(delays)


def _matcher(
    on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool],
) -> Callable[[BaseException], bool]:
    if callable(on) and not isinstance(on, type | tuple):
        return on
    types = cast("tuple[type[BaseException], ...]", on if isinstance(on, tuple) else (on,))

    def matches(exc: BaseException) -> bool:
        return isinstance(exc, types) and not isinstance(exc, Permanent)

    return matches


@dataclass(frozen=True, slots=True)
class Retry:
    """How a consumer retries a message whose handler raised.

    A failure that `on` accepts is retried after a delay, up to `attempts` calls of
    the handler in all and within `budget` seconds of delays; then, or at once for a
    failure `on` refuses (and always for `farine.amqp.Permanent` and bad bodies), the
    message goes to the dead-letter queue. On RabbitMQ the delay is the broker's: the
    message waits in a delay queue, holding no prefetch slot, and comes back to the
    work queue; `memory://` does the same on its own clock.

    Without `retry=`, a consumer retries transient failures (`is_transient`) with
    backoff within the `retry_budget` setting, and dead-letters the rest.

    Attributes:
        attempts: Calls of the handler at most (the first one included); None for no
            limit other than `budget`.
        backoff: A `Backoff` (the default: exponential, capped, with jitter), a fixed
            delay in seconds, or a list of delays (the last one repeated).
        on: The exception types to retry, or a predicate such as `is_transient`.
        budget: Seconds of (nominal) delays in all at most; None for no limit other
            than `attempts`.
        requeue: Retry by requeueing the message at once, counting attempts with the
            broker's `redelivered` flag (see `seed()`), instead of after a delay.

    Example:
        ```python
        @farine.amqp.consume(exchange="orders", retry=farine.amqp.Retry(attempts=3))
        def on_order(self, body, message): ...
        ```
    """

    attempts: int | None = 5
    backoff: Backoff | float | Sequence[float] = field(default_factory=Backoff)
    on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool] = (
        Exception,
    )
    budget: float | None = None
    requeue: bool = False

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ConfigurationError(f"Retry needs attempts >= 1, not {self.attempts!r}")
        if self.attempts is None and self.budget is None and not self.requeue:
            raise ConfigurationError("Retry needs attempts or budget (or both): it must end")
        if self.budget is not None and not self.budget >= 0:
            raise ConfigurationError(f"Retry needs budget >= 0 seconds, not {self.budget!r}")
        _as_delays(self.backoff)  # checked now: a wrong value fails at import time

    @classmethod
    def seed(cls) -> Retry:
        """baguette-messaging's rule: requeue once at once, then give up (no delay).

        A message that fails on its first delivery is requeued; when it fails again
        (it arrives `redelivered`), it is given up: dead-lettered, or rejected as the
        seed did with `dead_letter=False`.

        Example:
            ```python
            @farine.amqp.consume(
                exchange="orders", retry=farine.amqp.Retry.seed(), dead_letter=False
            )
            def on_order(self, body, message): ...
            ```
        """
        return cls(attempts=2, backoff=0.0, requeue=True)

    @classmethod
    def transient(cls, *, budget: float = 60.0, backoff: Backoff | None = None) -> Retry:
        """The default policy: transient failures retried within `budget` seconds.

        Example:
            ```python
            farine.amqp.Retry.transient(budget=300)
            ```
        """
        return cls(attempts=None, backoff=backoff or Backoff(), on=is_transient, budget=budget)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do with a failed message: retry after `delay` seconds, or give up."""

    retry: bool
    delay: float = 0.0
    reason: str = ""


class RetryPolicy:
    """A `Retry` made ready to decide, once per entrypoint."""

    __slots__ = ("_delays", "_matches", "_random", "spec")

    def __init__(self, spec: Retry, rand: Callable[[], float] = random.random) -> None:
        self.spec = spec
        self._delays = _as_delays(spec.backoff)
        self._matches = _matcher(spec.on)
        self._random = rand

    def decide(self, exc: BaseException, attempt: int) -> RetryDecision:
        """Decide after `exc` ended attempt number `attempt` (1 for the first call)."""
        spec = self.spec
        if not self._matches(exc):
            permanent = spec.on is is_transient or isinstance(exc, Permanent)
            kind = "permanent" if permanent else "not retried"
            return RetryDecision(False, reason=f"{kind} ({type(exc).__name__})")
        if spec.attempts is not None and attempt >= spec.attempts:
            return RetryDecision(False, reason=f"{attempt} attempt(s) made, all failed")
        nominal = self._delays.nominal(attempt)
        if spec.budget is not None:
            spent = sum(self._delays.nominal(n) for n in range(1, attempt + 1))
            if spent > spec.budget + 1e-9:  # a budget met exactly is not exceeded
                return RetryDecision(
                    False,
                    reason=f"retry budget of {spec.budget:g}s spent after {attempt} attempt(s)",
                )
        delay = nominal * (0.5 + 0.5 * self._random()) if self._delays.jitter else nominal
        return RetryDecision(True, delay=delay)


#: The delay queues' levels (seconds): a delay waits in the queue of the smallest level
#: at least as long as it, so that a message never waits behind one with a delay more
#: than one level longer (per-message TTLs expire only at the head of a queue).
DELAY_LEVELS: Final = (
    0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0,
)  # fmt: skip


def delay_level(delay: float) -> float:
    """The level of the delay queue a message waiting `delay` seconds goes to."""
    for level in DELAY_LEVELS:
        if delay <= level:
            return level
    return DELAY_LEVELS[-1]


def level_name(level: float) -> str:
    """The suffix of a level's delay queue: `100ms`, `5s`, `3600s`."""
    return f"{round(level * 1000)}ms" if level < 1 else f"{round(level)}s"
