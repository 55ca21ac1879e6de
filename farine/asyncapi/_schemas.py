"""JSON Schemas of the types a document names, from msgspec, in AsyncAPI's dialect.

msgspec writes JSON Schema 2020-12; an AsyncAPI 3.0 Schema Object is a superset of
draft 07. The few constructs that differ are rewritten: `prefixItems` (tuples) becomes
the array form of `items` with `additionalItems`, and OpenAPI's discriminator object
becomes AsyncAPI's discriminator, the name of the tag property.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any, Final, cast

import msgspec

from farine.codec import annotation_of
from farine.exceptions import ConfigurationError

if typing.TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("OPEN_OBJECT", "SchemaSet", "return_annotation")

#: A body with no annotation (or `Any`): decoded as the seed did, an object as a `dict`.
OPEN_OBJECT: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": True,
    "description": "No annotation: any JSON object (the seed's `dict` body).",
}

#: Where component schemas live in the document.
REF_TEMPLATE: Final = "#/components/schemas/{name}"

_ITERATORS: Final = frozenset(
    {
        collections.abc.Iterator,
        collections.abc.Iterable,
        collections.abc.Generator,
        collections.abc.AsyncIterator,
        collections.abc.AsyncIterable,
        collections.abc.AsyncGenerator,
    }
)

# Names a return annotation may use without importing them at run time (they are often
# imported under `TYPE_CHECKING` only, as `Iterator` for a generator method).
_FALLBACK_NAMES: Final[dict[str, Any]] = {
    **{cls.__name__: cls for cls in _ITERATORS},
    **{name: getattr(typing, name) for name in ("Any", "Optional", "Union", "Literal")},
}


def return_annotation(func: Callable[..., Any]) -> Any:
    """The resolved return annotation of `func` (`Any` when it has none or it cannot be
    resolved: a description must not fail where running the service would not)."""
    try:
        return annotation_of(func, "return")
    except ConfigurationError:
        pass
    target: Any = inspect.unwrap(func)
    annotations = cast(dict[str, Any], getattr(target, "__annotations__", None) or {})
    raw = annotations.get("return")
    if not isinstance(raw, str):
        return Any
    holder = types.SimpleNamespace(__annotations__={"return": raw})
    namespace: dict[str, Any] = {
        **_FALLBACK_NAMES,
        **cast(dict[str, Any], getattr(target, "__globals__", {})),
    }
    try:
        hints = typing.get_type_hints(holder, globalns=namespace, include_extras=True)
    except Exception:  # any error of the user's annotation: describe the value as unknown
        return Any
    return hints.get("return", Any)


def stream_item_type(annotation: Any) -> Any:
    """`T` of `Iterator[T]`, `AsyncGenerator[T, None]`, ...; `Any` for anything else."""
    origin = typing.get_origin(annotation)
    if origin in _ITERATORS:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return Any


def is_stream_annotation(annotation: Any) -> bool:
    """True for `Iterator[T]`, `AsyncIterator[T]`, generators... (bare or parametrised)."""
    return annotation in _ITERATORS or typing.get_origin(annotation) in _ITERATORS


class SchemaSet:
    """Collects the types of a document and turns them into schemas, all at once.

    msgspec names each Struct, dataclass... once in the components, so every message
    that carries a type refers to the same component. `add()` returns a placeholder
    that `resolve()` replaces by the schema, after `build()`.
    """

    def __init__(self) -> None:
        self._types: list[Any] = []
        self._index: dict[int, int] = {}
        self._schemas: list[dict[str, Any]] = []
        self.components: dict[str, Any] = {}

    def add(self, tp: Any, *, open_when_any: bool = False) -> dict[str, Any]:
        """Register `tp` and return its (future) schema, a dict filled in by `build()`.

        Args:
            tp: The annotation.
            open_when_any: Describe `Any` as an open object (message bodies), not as
                any JSON value (RPC arguments and results).
        """
        if tp is Any and open_when_any:
            return dict(OPEN_OBJECT)
        try:
            msgspec.json.schema(tp)
        except (TypeError, ValueError):  # not a type msgspec encodes: describe it as unknown
            name = getattr(tp, "__name__", None) or repr(tp)
            return {"description": f"{name}: a type with no JSON Schema (any JSON value)."}
        placeholder: dict[str, Any] = {}
        self._types.append(tp)
        self._schemas.append(placeholder)
        return placeholder

    def build(self) -> None:
        """Compute every schema registered so far and the shared components."""
        if not self._types:
            return
        schemas, components = msgspec.json.schema_components(self._types, ref_template=REF_TEMPLATE)
        for placeholder, schema in zip(self._schemas, schemas, strict=True):
            placeholder.update(to_draft7(schema))
        self.components = {name: to_draft7(value) for name, value in components.items()}


def to_draft7(schema: Any) -> Any:
    """Rewrite msgspec's JSON Schema 2020-12 constructs as AsyncAPI (draft 07) ones."""
    if isinstance(schema, list):
        return [to_draft7(item) for item in cast(list[Any], schema)]
    if not isinstance(schema, dict):
        return schema
    source = cast(dict[str, Any], schema)
    result: dict[str, Any] = {}
    for key, value in source.items():
        if key == "prefixItems":
            result["items"] = to_draft7(value)
            rest = source.get("items")
            result["additionalItems"] = to_draft7(rest) if rest is not None else True
        elif key == "items" and "prefixItems" in source:
            continue  # folded into additionalItems above
        elif key == "discriminator" and isinstance(value, dict):
            name = cast(dict[str, Any], value).get("propertyName")
            if isinstance(name, str):
                result["discriminator"] = name
        elif key in ("enum", "const", "default", "examples"):
            result[key] = value  # values, not schemas
        elif key in ("properties", "patternProperties", "$defs", "definitions"):
            result[key] = {k: to_draft7(v) for k, v in cast(dict[str, Any], value).items()}
        else:
            result[key] = to_draft7(value)
    return result
