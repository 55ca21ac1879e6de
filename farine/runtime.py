"""Run services: one task group per service, one supervised task per entrypoint.

Shape of a running process::

    root task group
      resources task group     shared connections (one AMQP connection per URI, ...)
        services task group
          service A (CancelScope; its deadline is set when stopping)
            entrypoint A.x   (CancelScope of its own; supervised: restarted with
              call           backoff if its loop fails; each handler call with a
              call           time limit runs in a scope nested in it)
            entrypoint A.y
          service B ...
      signal watcher

A service's entrypoints start concurrently, after the extensions it uses
(`farine.extensions`: the database, ...) have set it up; the service is *ready* once
every entrypoint has called `task_status.started()`.
On SIGINT/SIGTERM (or `Runtime.stop()`), `stopping` is set: entrypoints stop taking new
work and return once their in-flight handler calls are done; whatever still runs after
its entrypoint's `shutdown_timeout` (the decorator's, else the service's setting) is
cancelled, without touching the other entrypoints. A second signal exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import anyio

from farine._workers import WorkerPool
from farine.entrypoints import Entrypoint, ServiceContext
from farine.exceptions import ConfigurationError
from farine.extensions import extensions_for
from farine.settings import Config, current

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from anyio.abc import TaskGroup, TaskStatus

    from farine.discovery import ServiceDefinition
    from farine.ops._endpoint import OpsEndpoint
    from farine.ops._metrics import Metrics

__all__ = ("Runtime", "current_runtime", "run")

logger = logging.getLogger("farine.runtime")

T = TypeVar("T")

#: Backoff of an entrypoint whose loop keeps failing: first wait, growth, cap (seconds).
RESTART_BACKOFF: Final = (0.1, 2.0, 30.0)

_runtime: Runtime | None = None


def current_runtime() -> Runtime | None:
    """Return the runtime running in this process, if any.

    Its resources (connections) belong to its event loop: async code must check
    `Runtime.owns_current_loop()`, and threads reach the loop with
    `anyio.from_thread.run(..., token=runtime.token)`.
    """
    return _runtime


class _Startup:
    """The entrypoints of a service starting together: ready once every one of them is.

    The first entrypoint to fail before it is ready fails the start-up; the others are
    then cancelled, and a failure of theirs meanwhile is not reported again.
    """

    def __init__(self, count: int) -> None:
        self._pending = count
        self._failure: BaseException | None = None
        self._over = anyio.Event()
        if count == 0:
            self._over.set()

    def ready(self) -> None:
        """Count one more entrypoint as ready."""
        self._pending -= 1
        if self._pending == 0:
            self._over.set()

    def fail(self, exc: BaseException) -> bool:
        """Fail the start-up with `exc`; False when it already failed (or is over)."""
        if self._over.is_set():
            return False
        self._failure = exc
        self._over.set()
        return True

    async def wait(self) -> None:
        """Wait until every entrypoint is ready.

        Raises:
            Exception: The first error of an entrypoint that failed to start.
        """
        await self._over.wait()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure


class _Started:
    """The task status of one entrypoint: its first `started()` call counts it as ready."""

    def __init__(self, entrypoint: Entrypoint, startup: _Startup) -> None:
        self._entrypoint = entrypoint
        self._startup = startup
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            logger.info("entrypoint ready: %s", self._entrypoint.describe())
            self._startup.ready()


class Runtime:
    """Runs a set of services until they stop or the process is asked to stop.

    Args:
        services: The services to run, in start-up order.
        config: The configuration to read service settings from (default: the current
            one, loaded lazily).
        handle_signals: Turn SIGINT/SIGTERM into a graceful stop (the CLI does; tests
            running a runtime in-process usually do not).
        prepare_service: Called with each service's context as it starts, before its
            extensions and entrypoints (`farine.testing` installs its observer there).
        http: Serve the operations endpoint (`/livez`, `/readyz`, `/metrics`) on
            `HOST:PORT` (default: the `[DEFAULT]` setting `http`; unset: off).
    """

    def __init__(
        self,
        services: list[ServiceDefinition],
        *,
        config: Config | None = None,
        handle_signals: bool = False,
        prepare_service: Callable[[ServiceContext], None] | None = None,
        http: str | None = None,
    ) -> None:
        self.definitions = services
        self.config = config
        self.handle_signals = handle_signals
        self.prepare_service = prepare_service
        self.services: dict[str, ServiceContext] = {}
        self.stopping = anyio.Event()
        self._scopes: list[tuple[anyio.CancelScope, float]] = []
        self._startup_scope: anyio.CancelScope | None = None
        self._resources: dict[str, Any] = {}
        self._resource_locks: dict[str, anyio.Lock] = {}
        self._resource_tg: TaskGroup | None = None
        self._release = anyio.Event()
        self.token: anyio.lowlevel.EventLoopToken | None = None
        self.http = http
        #: Set once every service is ready (execute methods wait for it before their
        #: first run; `/readyz` also asks each entrypoint).
        self.all_ready = anyio.Event()
        #: The operations endpoint, while it runs (`--http`, the `http` setting).
        self.ops: OpsEndpoint | None = None
        self._metrics: Metrics | None = None
        self._entrypoints: list[tuple[Entrypoint, _Started]] = []

    # -- life cycle ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every service, report readiness, and return once all have stopped."""
        global _runtime
        if _runtime is not None:
            raise ConfigurationError("a farine runtime is already running in this process")
        _runtime = self
        self.token = anyio.lowlevel.current_token()
        try:
            async with anyio.create_task_group() as root:
                if self.handle_signals:
                    await root.start(self._watch_signals)
                ops = self._ops_endpoint()
                if ops is not None:
                    # Up before the services start, down after they stopped: `/readyz`
                    # says 503 while they start and drain.
                    await root.start(ops.serve)
                    self.ops = ops
                async with anyio.create_task_group() as resources:
                    self._resource_tg = resources
                    await self._run_services(task_status)
                    self._release.set()
                if ops is not None:
                    await ops.aclose()
                root.cancel_scope.cancel()
        finally:
            _runtime = None
            self._resource_tg = None

    def _ops_endpoint(self) -> OpsEndpoint | None:
        address = self.http or (self.config or current()).service("DEFAULT").http
        if not address:
            return None
        # Imported only when asked for: the endpoint off costs no import.
        from farine.ops._endpoint import OpsEndpoint
        from farine.ops._metrics import Metrics

        self._metrics = Metrics()
        return OpsEndpoint(self, address, self._metrics)

    @property
    def ready(self) -> bool:
        """True once every service is ready (`/readyz` also asks each entrypoint)."""
        return self.all_ready.is_set()

    def entrypoint_states(self) -> list[tuple[Entrypoint, bool]]:
        """Every entrypoint started so far, and whether it reported ready yet."""
        return [(entrypoint, started.done) for entrypoint, started in self._entrypoints]

    def opened_resource(self, key: str) -> object | None:
        """The resource `key` if it is open (see `resource()`), else None."""
        return self._resources.get(key)

    def owns_current_loop(self) -> bool:
        """True when called on the runtime's event loop (its resources live there)."""
        try:
            return anyio.lowlevel.current_token() == self.token
        except RuntimeError:  # no event loop in this thread
            return False

    def stop(self) -> None:
        """Begin a graceful stop (idempotent). Call it from the event loop's thread."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._startup_scope is not None:
            # Still starting (a consumer waiting for its broker, say): nothing is in
            # flight yet, so there is nothing to drain.
            self._startup_scope.cancel()
        now = anyio.current_time()
        for scope, grace in self._scopes:
            scope.deadline = min(scope.deadline, now + grace)

    async def _run_services(self, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as startup:
                self._startup_scope = startup
                for definition in self.definitions:
                    await tg.start(self._run_service, definition)
            self._startup_scope = None
            if startup.cancelled_caught:
                logger.info("stop requested during start-up; services not started were skipped")
            else:
                logger.info("ready: %s", ", ".join(self.services) or "no service")
                self.all_ready.set()
            task_status.started()
        logger.info("stopped")

    async def _run_service(
        self, definition: ServiceDefinition, *, task_status: TaskStatus[None]
    ) -> None:
        config = self.config or current()
        settings = config.service(definition.name)
        if not settings.enabled:
            logger.info("service %s is disabled (enabled = false); skipping", definition.name)
            task_status.started()
            return
        if definition.name in self.services:
            raise ConfigurationError(
                f"two services are named {definition.name!r} (class names must differ, case aside)"
            )
        ctx = ServiceContext(
            name=definition.name,
            instance=definition.cls(),
            module=definition.module,
            settings=settings,
            workers=WorkerPool(settings.max_workers, name=f"farine-{definition.name}"),
            stopping=self.stopping,
            runtime_ready=self.all_ready,
        )
        self.services[definition.name] = ctx
        if self._metrics is not None:
            ctx.metrics = self._metrics.service(ctx.name)
        if self.prepare_service is not None:
            self.prepare_service(ctx)
        logger.info("starting service %s", ctx.name)
        scope = anyio.CancelScope()
        # The service's own deadline leaves room for its slowest entrypoint to drain:
        # each entrypoint's scope, nested in it, enforces its own.
        graces = [spec.shutdown_timeout for _, spec in definition.entrypoints]
        grace = max([settings.shutdown_timeout, *(g for g in graces if g is not None)])
        self._scopes.append((scope, grace))
        with scope:
            async with self._announce_stop(ctx), ctx.exit_stack, anyio.create_task_group() as tg:
                # Connectors (the database, ...) set the service up before its
                # entrypoints start.
                for extension in extensions_for(settings):
                    await extension.attach(ctx)
                entrypoints: list[tuple[Entrypoint, float]] = []
                for attr, spec in definition.entrypoints:
                    if spec.transaction and not settings.db_connector:
                        # A transaction the code asks for but cannot get is a bug to
                        # report at once, not a silent no-op.
                        raise ConfigurationError(
                            f"{ctx.name}.{attr}: transaction=True needs a database, "
                            f"but db_connector is not set for service {ctx.name}"
                        )
                    handler = getattr(ctx.instance, attr)
                    try:
                        entrypoint = spec.bind(ctx, handler, attr)
                    except ConfigurationError as exc:
                        raise ConfigurationError(f"{ctx.name}.{attr}: {exc}") from None
                    own = spec.shutdown_timeout
                    entrypoints.append(
                        (entrypoint, settings.shutdown_timeout if own is None else own)
                    )
                # All at once: each start waits for broker round trips (declares,
                # consume), so one after another would add them up.
                startup = _Startup(len(entrypoints))
                for entrypoint, drain in entrypoints:
                    # A scope per entrypoint: its drain deadline is its own, and
                    # cancelling it stops that entrypoint alone.
                    own_scope = anyio.CancelScope()
                    self._scopes.append((own_scope, drain))
                    tg.start_soon(self._supervise, entrypoint, startup, own_scope, drain)
                await startup.wait()
                logger.info("service ready: %s", ctx.name)
                task_status.started()
        if scope.cancelled_caught:
            logger.warning(
                "service %s: shutdown_timeout (%gs) reached; cancelled what was still running",
                ctx.name,
                grace,
            )
        logger.info("service stopped: %s", ctx.name)

    @contextlib.asynccontextmanager
    async def _announce_stop(self, ctx: ServiceContext) -> AsyncGenerator[None]:
        async def announce() -> None:
            await self.stopping.wait()
            logger.info(
                "stopping service %s: waiting up to %gs for %d in-flight call(s)",
                ctx.name,
                ctx.settings.shutdown_timeout,
                ctx.in_flight,
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            yield
            tg.cancel_scope.cancel()

    async def _supervise(
        self, entrypoint: Entrypoint, startup: _Startup, scope: anyio.CancelScope, drain: float
    ) -> None:
        with scope:
            await self._serve(entrypoint, startup)
        if scope.cancelled_caught:
            logger.warning(
                "entrypoint %s: shutdown_timeout (%gs) reached; cancelled what was still running",
                entrypoint.qualname,
                drain,
            )

    async def _serve(self, entrypoint: Entrypoint, startup: _Startup) -> None:
        started = _Started(entrypoint, startup)
        self._entrypoints.append((entrypoint, started))
        initial, factor, cap = RESTART_BACKOFF
        delay = initial
        with entrypoint.service.activate():
            while True:
                try:
                    await entrypoint.serve(task_status=started)
                except Exception as exc:
                    if not started.done:
                        if not startup.fail(exc):
                            logger.debug(
                                "entrypoint %s also failed to start",
                                entrypoint.qualname,
                                exc_info=True,
                            )
                        return
                    if self.stopping.is_set():
                        logger.exception("entrypoint %s failed while stopping", entrypoint.qualname)
                        return
                    logger.exception(
                        "entrypoint %s failed; restarting in %.1fs", entrypoint.qualname, delay
                    )
                    with anyio.move_on_after(delay):
                        await self.stopping.wait()
                    if self.stopping.is_set():
                        return
                    delay = min(delay * factor, cap)
                    continue
                started.started()  # an entrypoint with nothing to wait for is ready too
                logger.info("entrypoint finished: %s", entrypoint.qualname)
                return

    # -- shared resources ---------------------------------------------------------------

    async def resource(self, key: str, factory: Callable[[], AbstractAsyncContextManager[T]]) -> T:
        """Return the process-wide resource `key`, opening it with `factory` on first use.

        The resource is entered in a task of its own and closed after every service has
        stopped, so one connection can serve all services (the AMQP connection, say).
        """
        if key in self._resources:
            return cast(T, self._resources[key])
        lock = self._resource_locks.setdefault(key, anyio.Lock())
        async with lock:
            if key not in self._resources:
                if self._resource_tg is None:
                    raise ConfigurationError("the runtime is not running")
                self._resources[key] = await self._resource_tg.start(self._hold, factory)
        return cast(T, self._resources[key])

    async def _hold(
        self,
        factory: Callable[[], AbstractAsyncContextManager[Any]],
        *,
        task_status: TaskStatus[Any],
    ) -> None:
        async with factory() as value:
            task_status.started(value)
            await self._release.wait()

    # -- signals ------------------------------------------------------------------------

    async def _watch_signals(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self.stopping.is_set():
                    logger.info("received %s: stopping (a second signal exits at once)", name)
                    self.stop()
                else:
                    logger.warning("received %s again: exiting now", name)
                    logging.shutdown()
                    sys.stderr.flush()
                    os._exit(128 + signum)


async def run(
    services: list[ServiceDefinition], *, handle_signals: bool = True, http: str | None = None
) -> None:
    """Run `services` until they all stop (the CLI's `farine start`; `http`: `--http`)."""
    await Runtime(services, handle_signals=handle_signals, http=http).run()
