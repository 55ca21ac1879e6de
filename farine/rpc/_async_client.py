"""The async RPC client, and what it shares with the blocking one.

`AsyncClient` publishes a request through the router of its connection (see
`farine.rpc._router`) and decodes the reply, or iterates the replies of a stream,
crediting the server as the reader goes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import anyio

from farine import settings as farine_settings
from farine._broker.loops import now
from farine.entrypoints import current_service
from farine.exceptions import RPCError
from farine.rpc._protocol import decode_reply, error_from_reply
from farine.rpc._router import router_in_runtime
from farine.runtime import current_runtime

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from farine._broker.message import Message
    from farine.rpc._router import Router
    from farine.settings import ServiceSettings

__all__ = ("AsyncClient", "ClientBase", "settings_for")


def settings_for(service: str) -> ServiceSettings:
    """The caller's settings when called from a service, else the target's section."""
    ctx = current_service()
    return ctx.settings if ctx is not None else farine_settings.get(service)


class ClientBase:
    """What both clients share: the target, its settings, and `rpc.<method>(...)`."""

    def __init__(
        self, service: str, timeout: float | None, settings: ServiceSettings | None
    ) -> None:
        self.service = service
        self.settings = settings if settings is not None else settings_for(service)
        self.timeout = timeout if timeout is not None else self.settings.rpc_timeout
        if settings is None and current_runtime() is None:
            # A script opens its own connection: the call's deadline covers connecting
            # too, so an unreachable broker is not retried for longer than that.
            connect_for = min(self.settings.connect_retry_timeout, self.timeout)
            self.settings = dataclasses.replace(self.settings, connect_retry_timeout=connect_for)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} service={self.service!r} timeout={self.timeout}>"

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)
        return functools.partial(self.call, method)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call `method` (see the subclasses for what is returned)."""
        raise NotImplementedError

    def _options(self, kwargs: dict[str, Any]) -> tuple[bool, float]:
        """Pop the call options (`__stream__`, `__timeout__`) out of a call's kwargs."""
        stream = bool(kwargs.pop("__stream__", False))
        timeout = kwargs.pop("__timeout__", None)
        return stream, self.timeout if timeout is None else float(timeout)


class AsyncClient(ClientBase):
    """Call the methods of `service` from async code: `await rpc.method(*args, **kwargs)`.

    `rpc.method(..., __stream__=True)` returns an async iterator of the items the method
    streams. `__timeout__=seconds` overrides the deadline of one call.

    Inside a service, `@farine.rpc.client` injects one into `async def` methods. From
    other async code use `async with farine.rpc.Client(service) as rpc:`.

    Args:
        service: The service to call.
        timeout: Deadline of each call in seconds (default: the `rpc_timeout` setting).
    """

    def __init__(
        self,
        service: str,
        timeout: float | None = None,
        *,
        router: Router | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        super().__init__(service, timeout, settings)
        self._router = router

    async def _get_router(self) -> Router:
        if self._router is None:
            self._router = await router_in_runtime(self.settings)
        if self._router is None:
            raise RPCError(
                "outside a running farine service, use `async with farine.rpc.Client(...)` "
                "(or the blocking client)"
            )
        return self._router

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call `method`; awaitable, or an async iterator with `__stream__=True`."""
        stream, limit = self._options(kwargs)
        if stream:
            return self._stream(method, args, kwargs, limit)
        return self._call(method, args, kwargs, limit)

    async def _call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit: float
    ) -> Any:
        router = self._router if self._router is not None else await self._get_router()
        message = await router.call(self.settings, self.service, method, args, kwargs, limit)
        reply = decode_reply(message.body, self.settings.body_max_depth)
        if reply.except_:
            raise error_from_reply(reply, f"{self.service}.{method}")
        return reply.body

    async def _stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit: float
    ) -> AsyncGenerator[Any]:
        router = await self._get_router()
        where = f"{self.service}.{method}"
        deadline = now() + limit
        ended = False
        async with router.open_stream(
            self.settings, self.service, method, args, kwargs, limit
        ) as call:
            # Credit goes to the server each time the reader has taken half a window.
            read = credited = 0
            step = max(1, call.window // 2)
            try:
                while True:
                    message: Message | None = None
                    with anyio.move_on_after(deadline - now()):
                        message = await call.next_reply(where)
                    if message is None:
                        raise RPCError(f"{where}: timeout: stream not finished within {limit:g}s")
                    reply = decode_reply(message.body, self.settings.body_max_depth)
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

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None
