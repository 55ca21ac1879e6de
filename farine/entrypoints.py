"""What every entrypoint shares: specs recorded by decorators, and the service context.

A decorator such as `farine.execute.method()` only *records* a frozen `EntrypointSpec`
on the function (in its `__farine_entrypoints__` tuple); nothing global is registered,
so importing a module twice or from two places changes nothing. When a service starts,
the runtime asks each spec to `bind()` itself to the service instance, which gives an
`Entrypoint` whose `serve()` runs until the service stops.

Handlers are called through `ServiceContext.call()`: `async def` handlers run on the
event loop, `def` handlers in the service's worker threads (`farine._workers`, at most
`max_workers` at once).
Extensions (the database connector) add per-call hooks to the context.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast

if TYPE_CHECKING:
    import anyio
    import httpx
    from anyio.abc import TaskStatus

    from farine._workers import WorkerPool
    from farine.ops._metrics import ServiceMetrics
    from farine.settings import ServiceSettings

__all__ = (
    "NOT_STARTED",
    "CallObserver",
    "Entrypoint",
    "EntrypointSpec",
    "ServiceContext",
    "current_service",
    "entrypoint_specs",
    "handler_transaction",
    "is_async_callable",
    "record_spec",
    "requested_transaction",
    "running_sync_calls",
)

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("farine.entrypoints")

SPECS_ATTRIBUTE = "__farine_entrypoints__"

#: What a wrapper of a handler returns when it did not start the call after all (the
#: service began stopping before a worker thread was free): observers are not told.
NOT_STARTED: Any = object()

SyncHook = Callable[[], contextlib.AbstractContextManager[Any]]
AsyncHook = Callable[[], contextlib.AbstractAsyncContextManager[Any]]
#: `(handler, consumer, where) -> handler`: see `ServiceContext.inbox`.
InboxHook = Callable[[Callable[..., Any], str, str], Callable[..., Any]]

_current_service: ContextVar[ServiceContext] = ContextVar("farine_current_service")
# Here rather than in the database connector: entrypoints set it for every call, and a
# service without a database must not import peewee.
_transaction: ContextVar[bool | None] = ContextVar("farine_transaction", default=None)


class _Counter:
    """Thread-safe count of `def` handler calls running in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def __enter__(self) -> None:
        with self._lock:
            self.value += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.value -= 1


_sync_calls = _Counter()


def running_sync_calls() -> int:
    """Number of `def` handler calls still running in worker threads (any service)."""
    return _sync_calls.value


@contextlib.contextmanager
def handler_transaction(enabled: bool | None) -> Generator[None]:
    """Choose, for the handler calls made in this block, whether they run in a transaction.

    Entrypoints wrap their `ServiceContext.call()` in it to apply the decorator's
    `transaction=` flag over the service's `transaction` setting. The choice is a context
    variable, so it reaches the worker thread of each call (and each `db_run`) made inside
    the block; the database connector reads it with `requested_transaction()`. Services
    without a database ignore it.

    Args:
        enabled: True or False to decide; None to follow the `transaction` setting.

    Example:
        ```python
        with handler_transaction(spec.transaction):
            result = await service.call(handler, *args)
        ```
    """
    token = _transaction.set(enabled)
    try:
        yield
    finally:
        _transaction.reset(token)


def requested_transaction() -> bool | None:
    """The choice of the innermost `handler_transaction()` block (None: the setting's)."""
    return _transaction.get()


class CallObserver(Protocol):
    """Told of every handler call that finished, by `ServiceContext.call()` (tests use it).

    Called on the event loop, after the call: keep it quick and never raise.
    """

    def call_finished(
        self,
        entrypoint: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        exception: Exception | None,
    ) -> None:
        """Record that a call of `entrypoint` (`service.method`) returned or raised."""
        ...


class EntrypointSpec(abc.ABC):
    """The frozen description of an entrypoint, recorded on a method by its decorator.

    Subclasses are frozen dataclasses holding the decorator's arguments.
    """

    #: Short kind name used in log lines ("execute", "consume", "rpc", "sse").
    kind: str = "entrypoint"

    #: Run each handler call in a database transaction: True or False, or None to follow
    #: the service's `transaction` setting. Subclasses with a `transaction=` decorator
    #: argument make it a field; True needs a database (checked at start-up).
    transaction: bool | None = None

    #: Seconds this entrypoint's in-flight calls get to finish once the service stops,
    #: or None for the service's `shutdown_timeout` setting. Subclasses with a
    #: `shutdown_timeout=` decorator argument make it a field; the runtime reads it.
    shutdown_timeout: float | None = None

    @abc.abstractmethod
    def bind(self, service: ServiceContext, handler: Callable[..., Any], name: str) -> Entrypoint:
        """Build the running entrypoint for `handler`, a bound method of the service.

        Raise `ConfigurationError` here for anything wrong with the declaration (an
        annotation that cannot be decoded, a missing endpoint, ...): it is reported at
        start-up with the service and method names.
        """


class Entrypoint(abc.ABC):
    """A running entrypoint: created by `EntrypointSpec.bind()`, run by the runtime."""

    def __init__(self, service: ServiceContext, handler: Callable[..., Any], name: str) -> None:
        self.service = service
        self.handler = handler
        self.name = name
        service.name_handler(handler, name)

    @property
    def qualname(self) -> str:
        """`service.method`, as shown in log lines."""
        return f"{self.service.name}.{self.name}"

    def describe(self) -> str:
        """A short description for the start-up log line."""
        return self.qualname

    async def not_ready(self) -> str | None:
        """Why this entrypoint cannot take work now, once started (None: it can).

        `/readyz` asks it. Entrypoints that consume from the broker say so while
        their consumer reconnects or the broker blocks their connection.
        """
        return None

    @abc.abstractmethod
    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        """Run until the service stops.

        Call `task_status.started()` once ready (consuming, connected, ...). When
        `self.service.stopping` is set, stop taking new work, let in-flight handler calls
        finish and return. Raising after `started()` makes the runtime log the error and
        restart `serve()` with backoff; raising before it fails the start-up.
        """


def record_spec(func: F, spec: EntrypointSpec) -> F:
    """Append `spec` to the entrypoint specs recorded on `func` and return `func`."""
    existing: tuple[EntrypointSpec, ...] = getattr(func, SPECS_ATTRIBUTE, ())
    setattr(func, SPECS_ATTRIBUTE, (*existing, spec))
    return func


def entrypoint_specs(obj: object) -> tuple[EntrypointSpec, ...]:
    """Return the entrypoint specs recorded on a function (empty when none)."""
    specs: object = getattr(obj, SPECS_ATTRIBUTE, ())
    if not isinstance(specs, tuple):
        return ()
    items = cast(tuple[object, ...], specs)
    return tuple(spec for spec in items if isinstance(spec, EntrypointSpec))


def is_async_callable(func: Callable[..., Any]) -> bool:
    """True for `async def` functions (and callables wrapping one)."""
    while isinstance(func, functools.partial):
        func = cast(Callable[..., Any], func.func)
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004  # callable objects with async __call__
    )


def current_service() -> ServiceContext | None:
    """Return the service whose handler is running in this task or worker thread."""
    return _current_service.get(None)


@dataclass(eq=False)
class ServiceContext:
    """One running service: its instance, settings and the resources its handlers share.

    Attributes:
        name: The service name (lowercase class name).
        instance: The service object whose methods are the handlers.
        module: The user's module the service was found in (`mymodule`).
        settings: The service's typed settings.
        workers: The worker threads running the service's `def` handlers (its
            `max_workers` bounds how many run at once).
        stopping: Set when the process begins a graceful stop.
        runtime_ready: Set once every service of the runtime is ready (its consumers
            consuming); None outside a runtime. `execute` methods first run then.
        call_hooks: Context-manager factories entered, in the worker thread, around
            each `def` handler call (the database connector opens its connection here).
        async_call_hooks: Async context-manager factories entered around each
            `async def` handler call.
        inbox: Set by a database connector: wraps the handler of an idempotent
            consumer (`consume(idempotent=True)`), given the consumer's name (its queue)
            and `service.method`, so that a message id it already processed is not
            processed again. Raises `ConfigurationError` for a handler it cannot wrap.
        observer: Told of each finished handler call (`farine.testing` sets one);
            None costs nothing.
        http_transport: The httpx transport of the service's HTTP clients (SSE
            listeners); None for the network.
        metrics: The hooks of the service's metrics, when the operations endpoint is
            on (`farine.ops`); None costs nothing.
    """

    name: str
    instance: object
    module: str
    settings: ServiceSettings
    workers: WorkerPool
    stopping: anyio.Event
    runtime_ready: anyio.Event | None = None
    call_hooks: list[SyncHook] = field(default_factory=list[SyncHook])
    async_call_hooks: list[AsyncHook] = field(default_factory=list[AsyncHook])
    inbox: InboxHook | None = None
    exit_stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    observer: CallObserver | None = None
    http_transport: httpx.AsyncBaseTransport | None = None
    metrics: ServiceMetrics | None = None
    _in_flight: int = 0
    _entrypoint_names: dict[Callable[..., Any], str] = field(
        default_factory=dict[Callable[..., Any], str]
    )

    @property
    def in_flight(self) -> int:
        """Number of handler calls running now."""
        return self._in_flight

    @contextlib.contextmanager
    def activate(self) -> Generator[None]:
        """Make this the current service of the calling task (and the threads it starts)."""
        token = _current_service.set(self)
        try:
            yield
        finally:
            _current_service.reset(token)

    def name_handler(self, handler: Callable[..., Any], entrypoint: str) -> None:
        """Say that calls of `handler` belong to the entrypoint (method) named `entrypoint`.

        Entrypoints name their handler when built; one that calls a wrapper of it names
        the wrapper too, so that observers see whose call finished.
        """
        self._entrypoint_names[handler] = entrypoint

    async def call(self, handler: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call `handler` the way its kind requires and return its result.

        `async def` handlers are awaited on the event loop; `def` handlers run in one of
        the service's worker threads. Per-call hooks are entered around the call. The
        `observer`, if any, is told of the call once it returned or raised.
        """
        self._in_flight += 1
        metrics = self.metrics
        timer = None if metrics is None else metrics.call_started(self._entrypoint_of(handler))
        try:
            if is_async_callable(handler):
                call = cast("Callable[..., Awaitable[Any]]", handler)
                if not self.async_call_hooks:  # the common case, without a context manager
                    token = _current_service.set(self)
                    try:
                        result = await call(*args, **kwargs)
                    finally:
                        _current_service.reset(token)
                else:
                    async with self._async_hooks():
                        result = await call(*args, **kwargs)
            else:
                result = await self.run_sync(handler, *args, **kwargs)
        except Exception as exc:
            if self.observer is not None:
                self._observe(handler, args, kwargs, None, exc)
            raise
        finally:
            self._in_flight -= 1
            if timer is not None:
                timer.finished()
        if self.observer is not None and result is not NOT_STARTED:
            self._observe(handler, args, kwargs, result, None)
        return result

    def observing(
        self, handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> contextlib.AbstractContextManager[None]:
        """A block that is one call of `handler`, for calls that end after `call()`
        returned (a stream): the `observer`, if any, is told when it ends or raises."""
        if self.observer is None:
            return contextlib.nullcontext()
        return self._observed_block(handler, args, kwargs)

    @contextlib.contextmanager
    def _observed_block(
        self, handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Generator[None]:
        try:
            yield
        except Exception as exc:
            self._observe(handler, args, kwargs, None, exc)
            raise
        self._observe(handler, args, kwargs, None, None)

    def _entrypoint_of(self, handler: Callable[..., Any]) -> str | None:
        name = self._entrypoint_names.get(handler)
        if name is None and hasattr(handler, "__wrapped__"):
            # A wrapper made for one call (functools.wraps) is known by what it wraps.
            name = self._entrypoint_names.get(handler.__wrapped__)  # pyright: ignore[reportFunctionMemberAccess]
        return name

    def _observe(
        self,
        handler: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        exception: Exception | None,
    ) -> None:
        observer = self.observer
        name = self._entrypoint_of(handler)
        if observer is not None and name is not None:
            observer.call_finished(f"{self.name}.{name}", args, kwargs, result, exception)

    async def run_sync(self, func: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run a blocking `func` in one of the service's worker threads, hooks entered."""

        def in_thread() -> R:
            # Each call runs in a copy of the caller's context, dropped afterwards: the
            # variable needs no reset.
            _current_service.set(self)
            with _sync_calls:
                hooks = self.call_hooks
                if not hooks:
                    return func(*args, **kwargs)
                with contextlib.ExitStack() as stack:
                    for hook in hooks:
                        stack.enter_context(hook())
                    return func(*args, **kwargs)

        # A thread cannot be interrupted: when the caller is cancelled (once the shutdown
        # grace period is over), it returns at once and the thread finishes on its own.
        return await self.workers.run(in_thread)

    @contextlib.asynccontextmanager
    async def _async_hooks(self) -> AsyncGenerator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for hook in self.async_call_hooks:
                await stack.enter_async_context(hook())
            with self.activate():
                yield
