"""The execute entrypoint: run a method, restart it when it returns or fails."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from farine import _telemetry as telemetry
from farine import _tracing
from farine._limits import check_timeout
from farine.entrypoints import (
    Entrypoint,
    EntrypointSpec,
    ServiceContext,
    handler_transaction,
    record_spec,
)
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ("ExecuteSpec", "method")

logger = logging.getLogger("farine.execute")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class ExecuteSpec(EntrypointSpec):
    """Spec of `farine.execute.method()`.

    Attributes:
        restart: Run the method again when it returns.
        backoff_initial: Seconds to wait before the first restart after a failure.
        backoff_max: Cap of the wait, which doubles after each consecutive failure.
        transaction: Run each run in a database transaction (None: the setting).
        shutdown_timeout: Seconds the current run gets to finish once the service
            stops (None: the setting).
    """

    restart: bool = True
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    transaction: bool | None = None
    shutdown_timeout: float | None = None
    kind = "execute"

    def bind(self, service: ServiceContext, handler: Callable[..., Any], name: str) -> Entrypoint:
        return _Execute(service, handler, name, self)


def method(
    restart: bool = True,
    *,
    backoff_initial: float = 0.5,
    backoff_max: float = 30.0,
    transaction: bool | None = None,
    shutdown_timeout: float | None = None,
) -> Callable[[F], F]:
    """Run the decorated method for as long as the service runs.

    The method takes only `self` and may be `def` (run in a worker thread) or
    `async def`. When it returns, it is run again (unless `restart=False`). When it
    raises, the traceback is logged and it is run again after a pause that starts at
    `backoff_initial` seconds and doubles up to `backoff_max`, so a method that keeps
    failing cannot spin the CPU; a successful run resets the pause.

    On a graceful stop the current run may finish (within `shutdown_timeout`) and is not
    restarted.

    Args:
        restart: Run the method again when it returns.
        backoff_initial: First pause after a failure, in seconds.
        backoff_max: Longest pause after repeated failures, in seconds.
        transaction: With a database, run each run of a `def` method in a transaction
            (each `db_run` of an `async def` one): committed when it returns, rolled
            back when it raises. Default: the service's `transaction` setting.
        shutdown_timeout: Seconds the current run gets to finish once the service
            stops (default: the `shutdown_timeout` setting).

    Example:
        ```python
        import farine.execute

        class Ticker:
            @farine.execute.method()
            async def tick(self):
                ...
        ```
    """
    if backoff_initial < 0 or backoff_max < backoff_initial:
        raise ConfigurationError("need 0 <= backoff_initial <= backoff_max")
    check_timeout("shutdown_timeout", shutdown_timeout, zero=True)
    spec = ExecuteSpec(
        restart=restart,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        transaction=transaction,
        shutdown_timeout=shutdown_timeout,
    )

    def decorate(func: F) -> F:
        return record_spec(func, spec)

    return decorate


async def _first_of(*events: anyio.Event | None) -> None:
    """Return once one of `events` (None: never set) is set."""
    waited = [event for event in events if event is not None]
    if not waited or any(event.is_set() for event in waited):
        return
    async with anyio.create_task_group() as tg:

        async def wait_for(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in waited:
            tg.start_soon(wait_for, event)


class _Execute(Entrypoint):
    def __init__(
        self, service: ServiceContext, handler: Callable[..., Any], name: str, spec: ExecuteSpec
    ) -> None:
        super().__init__(service, handler, name)
        self.spec = spec

    def describe(self) -> str:
        return f"{self.qualname} (execute, restart={self.spec.restart})"

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        stopping = self.service.stopping
        # The first run waits for every service to be ready, so that what it publishes
        # finds the consumers' queues bound (it may be a message to this service).
        await _first_of(self.service.runtime_ready, stopping)
        delay = self.spec.backoff_initial
        runs = 0
        while not stopping.is_set():
            runs += 1
            if not telemetry.on():
                failed = await self._run(runs, delay)
            else:
                call = _tracing.execute_call(self.qualname, self.service.name, runs)
                with telemetry.handling(call):
                    failed = await self._run(runs, delay)
            if failed:
                if not self.spec.restart:
                    return
                with anyio.move_on_after(delay):
                    await stopping.wait()
                delay = min(max(delay, 0.001) * 2, self.spec.backoff_max)
                continue
            delay = self.spec.backoff_initial
            if not self.spec.restart:
                return
            logger.debug("%s returned (run %d); restarting", self.qualname, runs)
            # A method that returns at once must not starve the event loop.
            await anyio.lowlevel.checkpoint()

    async def _run(self, runs: int, delay: float) -> bool:
        """Run the method once; True when it raised (the error is logged)."""
        try:
            with handler_transaction(self.spec.transaction):
                await self.service.call(self.handler)
        except Exception as exc:
            _tracing.record_failure(exc)
            if not self.spec.restart:
                logger.exception("%s raised; not restarting (restart=False)", self.qualname)
            else:
                logger.exception(
                    "%s raised (run %d); restarting in %.1fs", self.qualname, runs, delay
                )
            return True
        return False
