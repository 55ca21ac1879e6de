"""Decorators that inject a helper as the first argument after `self`.

`@farine.amqp.publish` injects a publisher and `@farine.rpc.client` an RPC client: a
blocking one into `def` methods, an awaitable one into `async def` methods (and async
generators). This module holds what both share.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from farine.entrypoints import is_async_callable

__all__ = ("INJECTED_ATTRIBUTE", "Injected", "injector")

#: Set on each method `injector()` decorates: what it injects (`farine.testing` reads it).
INJECTED_ATTRIBUTE = "__farine_injected__"

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Injected:
    """What a decorated method gets injected: an instance of one of these types."""

    blocking: type  # into `def` methods
    asynchronous: type  # into `async def` methods and async generators


def injector(
    make_blocking: Callable[[object], object],
    make_async: Callable[[object], object],
    kinds: Injected | None = None,
) -> Callable[[Callable[Concatenate[S, Any, P], R]], Callable[Concatenate[S, P], R]]:
    """Build a decorator injecting `make_*(self)` as the argument after `self`.

    The decorated method keeps its kind (`def`, `async def`, async generator), so
    entrypoints still run it the right way, and its remaining signature, for type
    checkers and for other decorators that read it. `kinds`, the types of what is
    injected, is recorded on the method (`INJECTED_ATTRIBUTE`) for test tools.
    """

    def decorate(method: Callable[Concatenate[S, Any, P], R]) -> Callable[Concatenate[S, P], R]:
        wrapper: Callable[..., Any]
        if inspect.isasyncgenfunction(method):
            agen_method = cast(Callable[..., Any], method)

            @functools.wraps(method)
            async def async_gen_wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Any:
                async for item in agen_method(self, make_async(self), *args, **kwargs):
                    yield item

            wrapper = async_gen_wrapper
        elif is_async_callable(method):
            async_method = cast(Callable[..., Any], method)

            @functools.wraps(method)
            async def async_wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Any:
                return await async_method(self, make_async(self), *args, **kwargs)

            wrapper = async_wrapper
        else:

            @functools.wraps(method)
            def sync_wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
                return method(self, make_blocking(self), *args, **kwargs)

            wrapper = sync_wrapper
        signature = inspect.signature(method)
        parameters = list(signature.parameters.values())
        # Hide the injected parameter from introspection (other decorators, help()).
        wrapper.__signature__ = signature.replace(parameters=parameters[:1] + parameters[2:])  # type: ignore[attr-defined]
        setattr(wrapper, INJECTED_ATTRIBUTE, kinds)
        return cast(Callable[Concatenate[S, P], R], wrapper)

    return decorate
