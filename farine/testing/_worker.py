"""`worker_factory()`: a service instance whose injected helpers are replaced, to unit-test
a handler by calling it."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from unittest import mock

from farine._inject import INJECTED_ATTRIBUTE, Injected
from farine.entrypoints import is_async_callable
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("worker_factory",)

T = TypeVar("T")

_MISSING: Final = object()

#: Attributes farine gives services with a database (`farine.connectors.sql`).
_DATABASE_NAMES: Final = ("db",)


@dataclass(frozen=True, slots=True)
class _InjectedMethod:
    """A method with injected parameters: the undecorated function and what it gets."""

    function: Callable[..., Any]
    names: tuple[str, ...]  # the injected parameters, in the function's order
    kinds: tuple[Injected | None, ...]  # what each one is, in the same order
    asynchronous: bool


def _unwrap(value: object) -> _InjectedMethod | None:
    layers: list[Injected | None] = []
    func: Any = value
    while callable(func) and INJECTED_ATTRIBUTE in getattr(func, "__dict__", {}):
        layers.append(cast(Injected | None, vars(func)[INJECTED_ATTRIBUTE]))
        func = getattr(func, "__wrapped__", None)
        if func is None:
            return None
    if not layers:
        return None
    function = cast("Callable[..., Any]", func)
    parameters = list(inspect.signature(function).parameters)[1 : 1 + len(layers)]
    # The outermost decorator's helper comes last: each wrapper puts its own first.
    asynchronous = is_async_callable(function) or inspect.isasyncgenfunction(function)
    return _InjectedMethod(function, tuple(parameters), tuple(reversed(layers)), asynchronous)


def _mock_for(kinds: Injected | None, asynchronous: bool) -> mock.Mock:
    kind = None if kinds is None else (kinds.asynchronous if asynchronous else kinds.blocking)
    # A client answering any attribute (`rpc.any_method`) cannot be a spec.
    spec = kind if kind is not None and not hasattr(kind, "__getattr__") else None
    if asynchronous:
        return mock.AsyncMock(spec=spec)
    return mock.MagicMock(spec=spec)


def _replaced(method: _InjectedMethod, values: tuple[Any, ...]) -> Callable[..., Any]:
    function = method.function
    replaced: Callable[..., Any]
    if inspect.isasyncgenfunction(function):

        async def async_gen(self: object, /, *args: Any, **kwargs: Any) -> Any:
            async for item in function(self, *values, *args, **kwargs):
                yield item

        replaced = async_gen
    elif method.asynchronous:

        async def coroutine(self: object, /, *args: Any, **kwargs: Any) -> Any:
            return await function(self, *values, *args, **kwargs)

        replaced = coroutine
    else:

        def plain(self: object, /, *args: Any, **kwargs: Any) -> Any:
            return function(self, *values, *args, **kwargs)

        replaced = plain
    functools.update_wrapper(replaced, function)
    signature = inspect.signature(function)
    kept = list(signature.parameters.values())
    replaced.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=kept[:1] + kept[1 + len(values) :]
    )
    return replaced


def worker_factory(service: type[T], /, **replacements: Any) -> T:
    """Return an instance of `service` whose injected helpers are replaced, to call its
    handlers directly in a unit test.

    Each parameter farine injects (`@farine.amqp.publish`'s `publish`,
    `@farine.rpc.client`'s `rpc`, ...) gets the object given under its name, else a
    `unittest.mock` object: with the spec of a `Publisher` (an `AsyncMock` with the spec
    of an `AsyncPublisher` when only `async def` methods get it), a `MagicMock`
    (`AsyncMock`) for an RPC client. When `def` and `async def` methods inject the same
    name, the mock is the blocking kind and the `async def` methods await a wrapper of
    it, so every call is recorded on the one mock. `db=` gives the service a database
    as `self.db` (and `self.db_run(fn)` then calls `fn` in the calling thread). Each
    replacement is also an attribute of the instance under its name (unless the class
    defines that name), so a test can check how it was used.

    The instance is of a subclass of `service` named like it; its `__init__` runs.

    Args:
        service: The service class.
        **replacements: Objects to inject, keyed by the injected parameter's name,
            and `db`.

    Raises:
        ConfigurationError: A replacement names nothing the class injects.

    Example:
        ```python
        worker = farine.testing.worker_factory(Orders)
        worker.created({"id": 1}, farine.testing.message({"id": 1}))
        worker.publish.assert_called_once_with({"order": 1})
        ```
    """
    methods: dict[str, _InjectedMethod] = {}
    for klass in reversed(service.__mro__):
        for attr, value in vars(klass).items():
            found = _unwrap(value)
            if found is not None:
                methods[attr] = found
            else:
                methods.pop(attr, None)
    known = {name for method in methods.values() for name in method.names}
    unknown = sorted(set(replacements) - known - set(_DATABASE_NAMES))
    if unknown:
        injected = ", ".join(sorted(known)) or "nothing"
        raise ConfigurationError(
            f"worker_factory: {service.__qualname__} injects no {', '.join(unknown)} "
            f"(it injects: {injected}; db= gives it a database)"
        )
    chosen: dict[str, Any] = dict(replacements)
    kinds_used: dict[str, set[bool]] = {}
    for method in methods.values():
        for name in method.names:
            kinds_used.setdefault(name, set()).add(method.asynchronous)
    for method in methods.values():
        for name, kinds in zip(method.names, method.kinds, strict=True):
            if name not in chosen:
                # Blocking if any `def` method gets it: one mock records every call.
                chosen[name] = _mock_for(kinds, asynchronous=False not in kinds_used[name])
    namespace: dict[str, Any] = {"__module__": service.__module__}
    for attr, method in methods.items():
        values: list[Any] = []
        for name in method.names:
            value = chosen[name]
            if (
                method.asynchronous
                and name not in replacements
                and kinds_used[name]
                == {
                    False,
                    True,
                }
            ):
                value = mock.AsyncMock(wraps=value)  # awaited here, recorded on the one mock
            values.append(value)
        namespace[attr] = _replaced(method, tuple(values))
    if "db" in replacements:
        database = replacements["db"]
        namespace["db"] = database

        async def db_run(self: object, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        namespace["db_run"] = db_run
    namespace["__qualname__"] = service.__qualname__
    subclass = cast(type[T], type(service.__name__, (service,), namespace))
    instance = subclass()
    for name, value in chosen.items():
        defined = inspect.getattr_static(service, name, _MISSING) is not _MISSING
        if name not in _DATABASE_NAMES and not defined:
            setattr(instance, name, value)
    return instance
