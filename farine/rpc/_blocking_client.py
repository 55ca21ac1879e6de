"""The blocking RPC client: `Client`, for `def` methods and plain scripts.

A blocking call runs the async client on an event loop: the runtime's, when called
from a worker thread of a running service, or else the script loop, an event loop in
a thread of its own started by the first such call.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio
import anyio.from_thread

from farine._broker.errors import BrokerUnavailable
from farine._connections import get_connection
from farine.exceptions import ServiceUnavailable
from farine.rpc._async_client import (
    API,
    AsyncClient,
    CallPlan,
    ClientBase,
    Untyped,
    stream_call,
    unary_call,
)
from farine.rpc._router import Router, open_router, router_in_runtime
from farine.runtime import current_runtime

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
    from concurrent.futures import Future

    from farine.settings import ServiceSettings

__all__ = ("Client", "ScriptLoop", "run_blocking", "use_script_backend")

R = TypeVar("R")


class ScriptLoop:
    """An event loop in a thread, for blocking calls made outside any runtime (scripts)."""

    _lock = threading.Lock()
    _instance: ScriptLoop | None = None
    #: The anyio backend of its loop ("asyncio" or "trio"): `use_script_backend()`.
    backend = "asyncio"

    def __init__(self) -> None:
        self._cm = anyio.from_thread.start_blocking_portal(self.backend, name="farine-rpc")
        self.portal = self._cm.__enter__()
        self.routers: dict[str, Router] = {}
        self._tasks: list[Future[None]] = []
        self._router_lock = threading.Lock()

    @classmethod
    def get(cls) -> ScriptLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
                # Stopped before the interpreter finalises: a portal left open until then
                # is garbage-collected while its (daemon) thread can no longer run, and
                # the process hangs at exit.
                atexit.register(cls.close)
            return cls._instance

    def router(self, settings: ServiceSettings) -> Router:
        with self._router_lock:
            router = self.routers.get(settings.amqp_uri)
            if router is None:
                connection = self.portal.call(get_connection, settings)
                # Exit handlers run last-registered first: stop the reply queues before
                # the transport's handler closes the connection under them.
                atexit.unregister(ScriptLoop.close)
                atexit.register(ScriptLoop.close)
                # A task of its own in the loop's thread: it reads the replies until closed.
                task, router = self.portal.start_task(Router(connection).run)
                self._tasks.append(task)
                self.routers[settings.amqp_uri] = router
            return router

    @classmethod
    def close(cls) -> None:
        """Stop the script loop and its reply queues (tests; interpreter exit)."""
        with cls._lock:
            instance, cls._instance = cls._instance, None
        if instance is not None:
            instance._stop()

    def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._cm.__exit__(None, None, None)


def use_script_backend(backend: str) -> None:
    """Run blocking calls made outside any runtime (scripts) on `backend`'s event loop.

    `backend` is "asyncio" (the default) or "trio". It applies to the loop that the next
    blocking call starts, so call it before the first one (`farine call --backend`).
    """
    ScriptLoop.backend = backend


def run_blocking(
    settings: ServiceSettings,
    fn: Callable[[Router], Awaitable[R]],
    unreachable: Callable[[BrokerUnavailable], ServiceUnavailable] | None = None,
) -> R:
    """Run `fn(router)` on the right event loop from blocking code and return its result.

    `unreachable` makes the error raised when no connection to the broker opens.
    """
    runtime = current_runtime()
    # Blocking code on the runtime's loop thread itself cannot wait for that loop (it
    # would deadlock): like a script, it uses a loop of its own.
    if runtime is not None and runtime.token is not None and not runtime.owns_current_loop():

        async def in_runtime() -> R:
            router = await router_in_runtime(settings)
            assert router is not None
            return await fn(router)

        return anyio.from_thread.run(in_runtime, token=runtime.token)
    loop = ScriptLoop.get()
    try:
        router = loop.router(settings)
    except BrokerUnavailable as exc:
        if unreachable is not None:
            raise unreachable(exc) from None
        raise ServiceUnavailable(f"timeout: cannot reach the broker: {exc}") from None
    return loop.portal.call(fn, router)


class Client(ClientBase[API]):
    """Call the methods of `service`: blocking, or `async with Client(...) as rpc`.

    Blocking (in `def` methods, where `@farine.rpc.client` injects one, and in plain
    scripts)::

        result = farine.rpc.Client("calc").add(1, 2)
        for item in farine.rpc.Client("calc").count(3, __stream__=True):
            ...

    Async (outside a service; inside one, `@farine.rpc.client` injects an `AsyncClient`)::

        async with farine.rpc.Client("calc") as rpc:
            result = await rpc.add(1, 2)

    Typed: `Client[CalcAPI]("calc")`, where `CalcAPI` is a `typing.Protocol` (or the
    service class) whose methods are `def`, is typed as a `CalcAPI` for type checkers;
    replies are decoded into each method's return annotation, and methods annotated
    `-> Iterator[T]` stream (no `__stream__`).

    Args:
        service: The service to call.
        timeout: Deadline of each call in seconds (default: the `rpc_timeout` setting).
            `__timeout__=seconds` overrides it for one call. Inside an RPC method, a
            call's deadline is never later than its caller's.
        headers: Headers every call carries (see `with_headers`).

    Raises:
        RPCTimeout: From a call: its deadline passed.
        UnknownService: Nothing serves `service`.
        MethodNotFound: The service has no such method.
        RemoteError: The method raised an exception not registered here (`remote_type`,
            `remote_message`, `remote_traceback`, `remote_data`), or the reply does not
            match the return annotation.
        ServiceUnavailable: No connection to the broker within the deadline.
    """

    if TYPE_CHECKING:

        @overload
        def __new__(
            cls: type[Client[Untyped]],
            service: str,
            timeout: float | None = None,
            *,
            headers: Mapping[str, str] | None = None,
        ) -> Client[Untyped]: ...

        @overload
        def __new__(
            cls,
            service: str,
            timeout: float | None = None,
            *,
            headers: Mapping[str, str] | None = None,
        ) -> API: ...

        def __new__(cls, *args: Any, **kwargs: Any) -> Any: ...

    def __init__(
        self,
        service: str,
        timeout: float | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(service, timeout, None, headers)
        self._exit: contextlib.AsyncExitStack | None = None

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call `method` and block for its result; a generator with `__stream__=True` (or
        for a stream method of the client's API)."""
        plan = self._plan(method, kwargs)
        if plan.stream:
            return self._stream(method, args, kwargs, plan)

        async def run(router: Router) -> Any:
            return await unary_call(router, self.settings, self.service, method, args, kwargs, plan)

        return run_blocking(self.settings, run, self._unreachable)

    def _stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], plan: CallPlan
    ) -> Generator[Any]:
        items: list[AsyncGenerator[Any]] = []

        async def start(router: Router) -> None:
            async def get_router() -> Router:
                return router

            items.append(
                stream_call(get_router, self.settings, self.service, method, args, kwargs, plan)
            )

        async def step(_: Router) -> tuple[bool, Any]:
            try:
                return True, await items[0].__anext__()
            except StopAsyncIteration:
                return False, None

        async def close(_: Router) -> None:
            await items[0].aclose()

        run_blocking(self.settings, start, self._unreachable)
        finished = False
        try:
            while True:
                more, item = run_blocking(self.settings, step)
                if not more:
                    finished = True
                    return
                yield item
        finally:
            if not finished:
                # Left early (break, exception): the server stops iterating too.
                run_blocking(self.settings, close)

    async def __aenter__(self) -> AsyncClient:
        router = await router_in_runtime(self.settings)
        if router is None:
            self._exit = contextlib.AsyncExitStack()
            try:
                connection = await get_connection(self.settings)
            except BrokerUnavailable as exc:
                raise self._unreachable(exc) from None
            router = await self._exit.enter_async_context(open_router(connection))
        return AsyncClient(
            self.service, self.timeout, router=router, settings=self.settings, headers=self._headers
        )

    async def __aexit__(self, *exc_info: object) -> None:
        if self._exit is not None:
            exit_stack, self._exit = self._exit, None
            await exit_stack.aclose()
