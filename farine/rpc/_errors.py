"""Remote errors: the exception types a caller re-raises as themselves, and safe summaries.

A method declares the exceptions that are part of its contract
(`@farine.rpc.method(errors=(OutOfStock,))`); a caller registers the ones it wants back
as themselves (`farine.rpc.register_error(OutOfStock)`; declaring also registers). A
declared error travels as its type name, a one-line message and its `args` (encoded
with msgspec); the caller looks the name up in its registry, never imports anything by
name, and rebuilds the exception by calling the class with the `args` decoded into the
annotations of its `__init__`.
"""

from __future__ import annotations

import inspect
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from farine.codec import annotation_of
from farine.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("errors_registered", "rebuild_error", "register_error", "safe_message")

E = TypeVar("E", bound=type[BaseException])

#: Longest message sent in an error reply when tracebacks are off.
MAX_MESSAGE: Final = 500

# Absolute paths of two segments or more (`/srv/app/x.py`, `C:\\app\\x.py`, `~/x/y`), and
# relative ones of Python files (`app/models.py`): replaced by `<path>` in error replies.
# The path of a URL (`http://host/a/b`) is left alone.
_PATH: Final = re.compile(
    r"(?<![\w.:/\\])(?:[A-Za-z]:|~|\.{1,2})?(?:[/\\][\w.\-+@~]+){2,}[/\\]?"
    r"|(?<![\w.])[\w.\-]+(?:[/\\][\w.\-]+)+\.pyc?\b"
)


@dataclass(frozen=True, slots=True)
class _Registered:
    cls: type[BaseException]
    # One decoder per parameter of `cls.__init__` that takes a positional argument, and
    # the decoder of the rest (`*args`), if any.
    params: tuple[msgspec.json.Decoder[Any], ...]
    rest: msgspec.json.Decoder[Any] | None


_registry: dict[str, _Registered] = {}
_lock = threading.Lock()
_encoder = msgspec.json.Encoder()


def register_error(cls: E) -> E:
    """Re-raise remote errors of type `cls` (matched by class name) as `cls` itself.

    The class is called with the remote exception's `args`, each decoded into the
    annotation of its `__init__` parameter (a `msgspec.Struct`, a dataclass, builtins...;
    unannotated parameters take the JSON value). Registering a class twice is harmless
    (as is a class of a module imported again); two classes of one name from different
    places are an error. Usable as a class decorator.

    Args:
        cls: An exception class.

    Raises:
        ConfigurationError: `cls` is not an exception class, another class of the same
            name is registered, or msgspec cannot decode one of its parameters' types.

    Example:
        ```python
        @farine.rpc.register_error
        class OutOfStock(Exception):
            def __init__(self, item: str, left: int) -> None:
                super().__init__(item, left)
                self.item, self.left = item, left
        ```
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ConfigurationError(f"register_error() takes an exception class, not {cls!r}")
    name = cls.__name__
    with _lock:
        known = _registry.get(name)
        if known is not None:
            if known.cls is cls:
                return cls
            same_place = (known.cls.__module__, known.cls.__qualname__) == (
                cls.__module__,
                cls.__qualname__,
            )
            if same_place:  # its module was imported again (a reload): the new one wins
                _registry[name] = _describe(cls)
                return cls
            raise ConfigurationError(
                f"two RPC error classes are named {name!r}: {known.cls.__module__}."
                f"{known.cls.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
        _registry[name] = _describe(cls)
    return cls


def errors_registered() -> tuple[type[BaseException], ...]:
    """The exception classes registered so far."""
    with _lock:
        return tuple(entry.cls for entry in _registry.values())


def _describe(cls: type[BaseException]) -> _Registered:
    init = cls.__init__
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):  # a builtin's __init__: it takes *args as they come
        return _Registered(cls, (), msgspec.json.Decoder())
    params: list[msgspec.json.Decoder[Any]] = []
    rest: msgspec.json.Decoder[Any] | None = None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for index, (name, parameter) in enumerate(signature.parameters.items()):
        if index == 0 and inspect.isfunction(init):
            continue  # self
        if parameter.kind not in positional and parameter.kind != parameter.VAR_POSITIONAL:
            continue
        annotation = annotation_of(init, name)
        try:
            decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(annotation)
        except TypeError as exc:
            raise ConfigurationError(
                f"{cls.__qualname__}: parameter {name!r}: msgspec cannot decode "
                f"{annotation!r}: {exc}"
            ) from None
        if parameter.kind == parameter.VAR_POSITIONAL:
            rest = decoder
        else:
            params.append(decoder)
    return _Registered(cls, tuple(params), rest)


def encode_args(exc: BaseException) -> list[msgspec.Raw] | None:
    """The `args` of a declared error as JSON values, or None if they do not encode."""
    try:
        return [msgspec.Raw(_encoder.encode(arg)) for arg in exc.args]
    except (TypeError, msgspec.EncodeError):
        return None


def rebuild_error(name: str, args: Sequence[msgspec.Raw]) -> BaseException | None:
    """The registered exception `name` rebuilt from its `args`; None if not registered.

    Raises:
        ValueError: The arguments do not fit the class (the message says which).
    """
    entry = _registry.get(name)
    if entry is None:
        return None
    values: list[Any] = []
    for index, raw in enumerate(args):
        if index < len(entry.params):
            decoder = entry.params[index]
        elif entry.rest is not None:
            decoder = entry.rest
        else:
            raise ValueError(f"{name} takes {len(entry.params)} arguments, got {len(args)}")
        try:
            values.append(decoder.decode(raw))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ValueError(f"{name}: argument {index + 1}: {exc}") from None
    try:
        return entry.cls(*values)
    except Exception as exc:
        raise ValueError(f"{name}({', '.join(map(repr, values))}) failed: {exc!r}") from None


def safe_message(exc: BaseException) -> str:
    """A one-line message for `exc` with no file path in it (for error replies)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        message = exc.strerror  # its str() names the file
    else:
        message = str(exc)
    line = message.strip().splitlines()[0] if message.strip() else ""
    line = _PATH.sub("<path>", line)
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."
