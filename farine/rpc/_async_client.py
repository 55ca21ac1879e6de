"""The async RPC client, and what it shares with the blocking one.

`AsyncClient` publishes a request through the router of its connection (see
`farine.rpc._router`) and decodes the reply, or iterates the replies of a stream,
crediting the server as the reader goes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import sys
import time
from typing import TYPE_CHECKING, Any, Generic, overload

import anyio

from farine import _tracing
from farine import settings as farine_settings
from farine._broker.errors import BrokerUnavailable
from farine._broker.loops import now
from farine.entrypoints import current_service
from farine.exceptions import RPCError, RPCTimeout, ServiceUnavailable
from farine.rpc._context import check_headers, outgoing
from farine.rpc._protocol import decode_reply, error_from_reply
from farine.rpc._router import router_in_runtime
from farine.rpc._typed import UNTYPED, api_of, method_type
from farine.runtime import current_runtime

if sys.version_info >= (3, 13):
    from typing import TypeVar
else:
    from typing_extensions import TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
    from typing import Self

    import msgspec
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from farine._broker.message import Message
    from farine.ops._metrics import ServiceMetrics
    from farine.rpc._router import Router
    from farine.settings import ServiceSettings

__all__ = (
    "API",
    "AsyncClient",
    "CallPlan",
    "ClientBase",
    "Untyped",
    "settings_for",
    "stream_call",
    "unary_call",
)


class Untyped:
    """The API of a client given none: any method, any arguments, JSON values back."""


#: The API type of a client: a `typing.Protocol` or the service class.
API = TypeVar("API", default=Untyped)

_NO_HEADERS: Mapping[str, str] = {}
_UNRESOLVED: Any = object()


@dataclasses.dataclass(slots=True)
class CallPlan:
    """One call, as the client prepared it in the caller's thread.

    Attributes:
        stream: Iterate the replies (`__stream__=True`, or a stream method of the API).
        limit: Seconds until its deadline (its own, or less, its caller's).
        headers: The headers it carries.
        decoder: Decodes its value or items (the API's return type); None: any JSON.
        trace: The caller's trace context, when tracing is on (`farine._tracing`).
    """

    stream: bool
    limit: float
    headers: Mapping[str, str]
    decoder: msgspec.json.Decoder[Any] | None
    trace: Context | None = None


def settings_for(service: str) -> ServiceSettings:
    """The caller's settings when called from a service, else the target's section."""
    ctx = current_service()
    return ctx.settings if ctx is not None else farine_settings.get(service)


class ClientBase(Generic[API]):
    """What both clients share: the target, its settings, and `rpc.<method>(...)`."""

    def __init__(
        self,
        service: str,
        timeout: float | None,
        settings: ServiceSettings | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.service = service
        # Not `headers`: any public name hides a remote method of that name (`rpc.headers()`).
        self._headers: Mapping[str, str] = check_headers(headers) if headers else _NO_HEADERS
        # Known at the first call: `AsyncClient[StockAPI](...)` sets it after __init__.
        self._api: type | None = _UNRESOLVED
        self.settings = settings if settings is not None else settings_for(service)
        self.timeout = timeout if timeout is not None else self.settings.rpc_timeout
        #: The limit an unreachable broker is blamed on, when it is the call's timeout.
        self._connect_limit: str | None = None
        if settings is None and current_runtime() is None:
            # A script opens its own connection: the call's deadline covers connecting
            # too, so an unreachable broker is not retried for longer than that.
            if self.timeout < self.settings.connect_retry_timeout:
                source = "the call's timeout" if timeout is not None else "rpc_timeout"
                self._connect_limit = f"{source} = {self.timeout:g}s"
            connect_for = min(self.settings.connect_retry_timeout, self.timeout)
            self.settings = dataclasses.replace(self.settings, connect_retry_timeout=connect_for)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} service={self.service!r} timeout={self.timeout}>"

    def _unreachable(self, exc: BrokerUnavailable) -> ServiceUnavailable:
        """The error of a call whose connection to the broker could not be opened."""
        if self._connect_limit is None:
            return ServiceUnavailable(f"timeout: cannot reach the broker: {exc}")
        return ServiceUnavailable(
            f"timeout: cannot reach the broker: {exc.failure}; {self._connect_limit})"
        )

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)
        return functools.partial(self.call, method)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call `method` (see the subclasses for what is returned)."""
        raise NotImplementedError

    def with_headers(self, headers: Mapping[str, str]) -> Self:
        """Return a client whose calls also carry `headers` (strings to strings).

        A method reads them with `farine.rpc.context().headers`, and the calls it makes
        pass them on. Headers given here win over those passed on.

        Raises:
            TypeError: A key or value is not a string.

        Example:
            ```python
            rpc = rpc.with_headers({"tenant": "acme"})
            ```
        """
        clone = copy.copy(self)
        clone._headers = {**self._headers, **check_headers(headers)}
        return clone

    def _plan(self, method: str, kwargs: dict[str, Any]) -> CallPlan:
        """Pop the call options (`__stream__`, `__timeout__`) out of a call's kwargs and
        prepare it (in the caller's thread: it reads the context of the call being
        handled there, if any).

        Raises:
            RPCTimeout: The deadline of the call being handled here passed already.
        """
        api = self._api
        if api is _UNRESOLVED:
            api = self._api = api_of(self)
        typed = UNTYPED if api is None else method_type(api, method)
        stream = bool(kwargs.pop("__stream__", False)) or typed.stream
        timeout = kwargs.pop("__timeout__", None)
        own = self.timeout if timeout is None else float(timeout)
        limit, headers = outgoing(own, self._headers)
        if limit <= 0:
            raise RPCTimeout(
                f"{self.service}.{method}: timeout: the deadline of the call being handled "
                "passed before this one was made"
            )
        return CallPlan(stream, limit, headers, typed.decoder, _tracing.capture())


class AsyncClient(ClientBase[API]):
    """Call the methods of `service` from async code: `await rpc.method(*args, **kwargs)`.

    `rpc.method(..., __stream__=True)` returns an async iterator of the items the method
    streams. `__timeout__=seconds` overrides the deadline of one call.

    Typed: `AsyncClient[StockAPI]("stock")`, where `StockAPI` is a `typing.Protocol`
    whose methods are `async def` (or the service class, if its methods are), is typed
    as a `StockAPI` for type checkers; replies are decoded into each method's return
    annotation, and methods annotated `-> AsyncIterator[T]` stream (no `__stream__`).

    Inside a service, `@farine.rpc.client` injects one into `async def` methods. From
    other async code use `async with farine.rpc.Client(service) as rpc:`.

    Args:
        service: The service to call.
        timeout: Deadline of each call in seconds (default: the `rpc_timeout` setting).
            Inside an RPC method, a call's deadline is never later than its caller's.
        headers: Headers every call carries (see `with_headers`).

    Raises:
        RPCTimeout: From a call: its deadline passed.
        UnknownService: Nothing serves `service`.
        MethodNotFound: The service has no such method.
        RemoteError: The method raised an exception not registered here, or the reply
            does not match the return annotation.
        ServiceUnavailable: No connection to the broker within the deadline.
    """

    if TYPE_CHECKING:

        @overload
        def __new__(
            cls: type[AsyncClient[Untyped]],
            service: str,
            timeout: float | None = None,
            *,
            router: Router | None = None,
            settings: ServiceSettings | None = None,
            headers: Mapping[str, str] | None = None,
        ) -> AsyncClient[Untyped]: ...

        @overload
        def __new__(
            cls,
            service: str,
            timeout: float | None = None,
            *,
            router: Router | None = None,
            settings: ServiceSettings | None = None,
            headers: Mapping[str, str] | None = None,
        ) -> API: ...

        def __new__(cls, *args: Any, **kwargs: Any) -> Any: ...

    def __init__(
        self,
        service: str,
        timeout: float | None = None,
        *,
        router: Router | None = None,
        settings: ServiceSettings | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(service, timeout, settings, headers)
        self._router = router

    async def _get_router(self) -> Router:
        if self._router is None:
            try:
                self._router = await router_in_runtime(self.settings)
            except BrokerUnavailable as exc:
                raise self._unreachable(exc) from None
        if self._router is None:
            raise RPCError(
                "outside a running farine service, use `async with farine.rpc.Client(...)` "
                "(or the blocking client)"
            )
        return self._router

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call `method`; awaitable, or an async iterator with `__stream__=True` (or a
        stream method of the client's API)."""
        plan = self._plan(method, kwargs)
        if plan.stream:
            return stream_call(
                self._get_router, self.settings, self.service, method, args, kwargs, plan
            )
        return self._call(method, args, kwargs, plan)

    async def _call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], plan: CallPlan
    ) -> Any:
        router = self._router if self._router is not None else await self._get_router()
        return await unary_call(router, self.settings, self.service, method, args, kwargs, plan)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def unary_call(
    router: Router,
    settings: ServiceSettings,
    service: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    plan: CallPlan,
) -> Awaitable[Any]:
    """Make a call through `router`: awaiting it returns the call's (decoded) value.

    Timed for the calling service's metrics and traced when either is on (checked
    now, in the caller's task).
    """
    caller = current_service()
    metrics = None if caller is None else caller.metrics
    tracer = None if plan.trace is None else _tracing.tracer()
    if metrics is None and tracer is None:
        return _unary_call(router, settings, service, method, args, kwargs, plan, None)
    call = functools.partial(_unary_call, router, settings, service, method, args, kwargs, plan)
    return _observed(call, service, method, plan, metrics, tracer)


async def _observed(
    call: Callable[[Mapping[str, Any] | None, Span | None], Awaitable[Any]],
    service: str,
    method: str,
    plan: CallPlan,
    metrics: ServiceMetrics | None,
    tracer: Tracer | None,
) -> Any:
    """Await `call(trace, span)`, timed for `metrics` and in a client span of `tracer`
    (either may be None)."""
    start = time.perf_counter()
    outcome = "error"
    try:
        if tracer is None:
            result = await call(None, None)
        else:
            with _tracing.rpc_client_span(tracer, plan.trace, service, method) as (span, trace):
                result = await call(trace, span)
        outcome = "ok"
    except RPCTimeout:
        outcome = "timeout"
        raise
    finally:
        if metrics is not None:
            metrics.rpc_called(service, method, outcome, time.perf_counter() - start)
    return result


async def _unary_call(
    router: Router,
    settings: ServiceSettings,
    service: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    plan: CallPlan,
    trace: Mapping[str, Any] | None,
    span: Span | None = None,
) -> Any:
    message = await router.call(
        settings, service, method, args, kwargs, plan.limit, plan.headers, trace
    )
    if span is not None and message.correlation_id:
        span.set_attribute("messaging.message.conversation_id", message.correlation_id)
    where = f"{service}.{method}"
    reply = decode_reply(message.body, settings.body_max_depth, plan.decoder, where)
    if reply.except_:
        raise error_from_reply(reply, where)
    return reply.body


def stream_call(
    get_router: Callable[[], Awaitable[Router]],
    settings: ServiceSettings,
    service: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    plan: CallPlan,
) -> AsyncGenerator[Any]:
    """Make a streaming call through the router `get_router` returns, and yield its
    (decoded) items."""
    if plan.trace is None:
        return _stream_items(get_router, settings, service, method, args, kwargs, plan)
    return _traced_stream(get_router, settings, service, method, args, kwargs, plan)


async def _traced_stream(
    get_router: Callable[[], Awaitable[Router]],
    settings: ServiceSettings,
    service: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    plan: CallPlan,
) -> AsyncGenerator[Any]:
    tracer = _tracing.tracer()
    assert tracer is not None, "a plan has a trace context only while tracing is on"
    with _tracing.rpc_client_span(tracer, plan.trace, service, method) as (span, trace):
        items = _stream_items(
            get_router, settings, service, method, args, kwargs, plan, trace, span
        )
        async with contextlib.aclosing(items):
            async for item in items:
                yield item


async def _stream_items(
    get_router: Callable[[], Awaitable[Router]],
    settings: ServiceSettings,
    service: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    plan: CallPlan,
    trace: Mapping[str, Any] | None = None,
    span: Span | None = None,
) -> AsyncGenerator[Any]:
    router = await get_router()
    where = f"{service}.{method}"
    limit = plan.limit
    deadline = now() + limit
    ended = False
    async with router.open_stream(
        settings, service, method, args, kwargs, limit, plan.headers, trace
    ) as call:
        if span is not None:
            span.set_attribute("messaging.message.conversation_id", call.correlation_id)
        # Credit goes to the server each time the reader has taken half a window.
        read = credited = 0
        step = max(1, call.window // 2)
        try:
            while True:
                message: Message | None = None
                with anyio.move_on_after(deadline - now()):
                    message = await call.next_reply(where)
                if message is None:
                    raise RPCTimeout(f"{where}: timeout: stream not finished within {limit:g}s")
                reply = decode_reply(message.body, settings.body_max_depth, plan.decoder, where)
                if reply.except_:
                    ended = True
                    raise error_from_reply(reply, where)
                if reply.has_body:
                    read += 1
                    if read - credited >= step and await router.credit(call, read):
                        credited = read
                    yield reply.body
                if reply.end:
                    ended = True
                    return
        finally:
            if not ended:
                await router.cancel(call)
