"""`@farine.rpc.client`: inject an RPC client, blocking or async by the method's kind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from farine._inject import Injected, injector
from farine.rpc._async_client import AsyncClient
from farine.rpc._blocking_client import Client

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("client",)

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")


def client(
    service: str, timeout: float | None = None
) -> Callable[[Callable[Concatenate[S, Any, P], R]], Callable[Concatenate[S, P], R]]:
    """Inject an RPC client of `service` as the first argument after `self`.

    In a `def` method it is a blocking `Client` (`rpc.method(...)` returns the result,
    `for item in rpc.method(..., __stream__=True)` iterates a stream); in an `async def`
    method an `AsyncClient` (`await rpc.method(...)`, `async for item in
    rpc.method(..., __stream__=True)`). The method keeps its other parameters.

    Args:
        service: The service to call.
        timeout: Deadline of each call in seconds (default: the `rpc_timeout` setting).

    Example:
        ```python
        import farine.rpc

        class Client:
            @farine.rpc.client("myotherservice")
            def dummy(self, rpc):
                result = rpc.dummy()
        ```
    """

    return injector(
        lambda _self: Client(service, timeout),
        lambda _self: AsyncClient(service, timeout),
        Injected(Client, AsyncClient),
    )
