"""What a typed client learns from its API type: which methods stream, and the type of
what they return (decoded with msgspec)."""

from __future__ import annotations

import collections.abc
import threading
import typing
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from farine.codec import annotation_of, check_decodable
from farine.exceptions import ConfigurationError

__all__ = ("UNTYPED", "MethodType", "api_of", "method_type")

_STREAMS: Final = frozenset({
    collections.abc.AsyncIterator, collections.abc.AsyncGenerator, collections.abc.AsyncIterable,
    collections.abc.Iterator, collections.abc.Generator,
})  # fmt: skip
_AWAITABLES: Final = frozenset({collections.abc.Awaitable, collections.abc.Coroutine})


@dataclass(frozen=True, slots=True)
class MethodType:
    """How to call one method, and decode what it returns.

    Attributes:
        stream: The method streams (its return annotation is an iterator).
        decoder: Decodes its value (or each item); None: any JSON value.
    """

    stream: bool
    decoder: msgspec.json.Decoder[Any] | None


#: A method the client knows nothing about.
UNTYPED: Final = MethodType(False, None)

_cache: dict[tuple[type, str], MethodType] = {}
_lock = threading.Lock()


def api_of(client: object) -> type | None:
    """The API type a client was specialised with (`AsyncClient[StockAPI]`), if any."""
    alias = client.__dict__.get("__orig_class__")
    if alias is None:
        return None
    args = typing.get_args(alias)
    api = args[0] if args else None
    return api if isinstance(api, type) else None


def method_type(api: type, name: str) -> MethodType:
    """What `api` says of method `name` (`UNTYPED` when it has no such method).

    Raises:
        ConfigurationError: Its return annotation does not resolve, or msgspec cannot
            decode it.
    """
    key = (api, name)
    found = _cache.get(key)
    if found is not None:
        return found
    func = getattr(api, name, None) if not name.startswith("_") else None
    if not callable(func):
        return UNTYPED
    where = f"{api.__qualname__}.{name}"
    annotation = annotation_of(func, "return")
    stream = False
    origin = typing.get_origin(annotation)
    if origin in _AWAITABLES:
        annotation = typing.get_args(annotation)[-1]
        origin = typing.get_origin(annotation)
    if origin in _STREAMS:
        stream = True
        args = typing.get_args(annotation)
        annotation = args[0] if args else Any
    decoder: msgspec.json.Decoder[Any] | None = None
    if annotation is not Any:
        try:
            check_decodable(annotation)
            decoder = msgspec.json.Decoder(annotation)
        except TypeError as exc:
            raise ConfigurationError(
                f"{where}: msgspec cannot decode the return type {annotation!r}: {exc}"
            ) from None
    found = MethodType(stream, decoder)
    with _lock:
        _cache[key] = found
    return found
