"""Bodies on the wire: JSON (or msgpack) through msgspec, decoded into the handler's annotations.

A handler's annotation (`body: Order`, `data: list[int]`, `x: int | None`) picks the
decoded type; no annotation means `Any` (a JSON object arrives as a `dict`, as in
baguette-messaging). Decoders are built once per handler, when it is bound, and an
annotation msgspec cannot decode is reported then, naming the handler.

A message's `content_type` picks the format: JSON when it has none or says JSON, msgpack
when it says msgpack; text (`text/*`) for a `str` or unannotated body and raw bytes
(`application/data`, kombu's name for them, or `application/octet-stream`) for a `bytes`
or unannotated one, as kombu handed such bodies to baguette-messaging's handlers (text for
any other annotation is read as JSON: some tools label JSON as text). Anything else is a
bad body.

Publishing, `encode_body` sends a `bytes`, `bytearray` or `memoryview` body as it is,
labelled `RAW_BYTES`; any other body is encoded with the serializer.
"""

from __future__ import annotations

import inspect
import itertools
import re
import types
import typing
from typing import Any, Final, cast

import msgspec
import msgspec.inspect

from farine.exceptions import ConfigurationError, FarineError

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = (
    "CONTENT_TYPES",
    "RAW_BYTES",
    "BadBody",
    "BodyDecoder",
    "annotation_of",
    "check_decodable",
    "check_depth",
    "encode",
    "encode_body",
    "to_builtins",
)

#: Default largest body decoded, in bytes (the `max_body_size` setting overrides it).
DEFAULT_MAX_BODY_SIZE: Final = 16 * 1024 * 1024

#: Default deepest nesting of arrays and objects in a body (the `body_max_depth` setting
#: overrides it).
DEFAULT_BODY_MAX_DEPTH: Final = 256

#: The largest `body_max_depth` accepted: every supported interpreter decodes this deep
#: from any handler, so the limit, not the interpreter's recursion limit, decides.
BODY_MAX_DEPTH_LIMIT: Final = 512

_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()

#: The content type (and content encoding) a body is published with, by serializer
#: (the `serializer` setting); kombu's names, so baguette-messaging reads them too.
CONTENT_TYPES: Final = {
    "json": ("application/json", "utf-8"),
    "msgpack": ("application/x-msgpack", "binary"),
}

#: The content type and content encoding of a body published as raw bytes: kombu's own
#: (what its `dumps` gives a `bytes` body), which kombu consumers trust without an
#: accept list naming it.
RAW_BYTES: Final = ("application/data", "binary")

_RAW_TYPES: Final = frozenset({"application/data", "application/octet-stream"})
_JSON_TYPES: Final = frozenset({"application/json", "text/json", "application/x-json"})
_MSGPACK_TYPES: Final = frozenset(
    {"application/x-msgpack", "application/msgpack", "application/vnd.msgpack"}
)
#: Content encodings of bodies that are not compressed (kombu's, and none).
_PLAIN_ENCODINGS: Final = frozenset({"", "utf-8", "utf8", "binary", "identity"})


def check_decodable(tp: Any) -> None:
    """Raise `TypeError` if JSON cannot be decoded into `tp`.

    msgspec accepts any class when a decoder is built (it would defer to a `dec_hook` at
    decode time); farine has no hook, so such a type could never decode: catch it at start-up.
    """
    _walk(msgspec.inspect.type_info(tp), set())


def _walk(info: msgspec.inspect.Type, seen: set[int]) -> None:
    if id(info) in seen:  # recursive Structs
        return
    seen.add(id(info))
    if isinstance(info, msgspec.inspect.CustomType):
        raise TypeError(f"{info.cls.__name__} is not a type msgspec can decode JSON into")
    children: list[msgspec.inspect.Type] = []
    if isinstance(info, msgspec.inspect.UnionType):
        children.extend(info.types)
    elif isinstance(info, msgspec.inspect.CollectionType):
        children.append(info.item_type)
    elif isinstance(info, msgspec.inspect.DictType):
        children.extend((info.key_type, info.value_type))
    elif isinstance(info, msgspec.inspect.TupleType):
        children.extend(info.item_types)
    elif isinstance(
        info,
        msgspec.inspect.StructType
        | msgspec.inspect.DataclassType
        | msgspec.inspect.TypedDictType
        | msgspec.inspect.NamedTupleType,
    ):
        children.extend(field.type for field in info.fields)
    for child in children:
        _walk(child, seen)


class BadBody(FarineError):
    """A body that cannot be decoded: invalid JSON, wrong type, too large, too deep, or a
    content type farine does not read."""


# A JSON string, escapes included: its brackets are text, not nesting.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(sorted(set(range(256)) - set(b"[]{}")))
_NESTING_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
# Every bytes but those that can open a msgpack array or map (fix, 16- and 32-bit forms).
_NOT_MSGPACK_OPENERS: Final = bytes(
    sorted(set(range(256)) - set(range(0x80, 0xA0)) - set(range(0xDC, 0xE0)))
)


def check_depth(
    data: bytes | bytearray | memoryview | str, max_depth: int, format: str = "JSON"
) -> None:
    """Raise `BadBody` if arrays and objects in `data` nest deeper than `max_depth`.

    The limit is the same on every interpreter: decoding itself would stop at a depth
    that depends on the Python version's recursion limit. `[1]` and `{"a": 1}` have depth
    1, `[[1]]` depth 2. Malformed data that is not too deep passes: decoding it says
    what is wrong.

    Args:
        data: The encoded body.
        max_depth: The deepest nesting allowed (the `body_max_depth` setting).
        format: `"JSON"` or `"msgpack"`.

    Raises:
        BadBody: `data` nests deeper than `max_depth`.

    Example:
        >>> check_depth(b"[[1]]", 1)
        Traceback (most recent call last):
        farine.codec.BadBody: JSON nested too deeply (more than body_max_depth = 1 levels)
    """
    if format == "JSON":
        too_deep = _json_deeper_than(data, max_depth)
    else:
        too_deep = _msgpack_deeper_than(data, max_depth)
    if too_deep:
        raise BadBody(f"{format} nested too deeply (more than body_max_depth = {max_depth} levels)")


def _json_deeper_than(data: bytes | bytearray | memoryview | str, limit: int) -> bool:
    raw = data.encode() if isinstance(data, str) else data
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    # Depth cannot exceed the number of openers: most bodies end the check here, in C.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return any(
        depth > limit for depth in itertools.accumulate(map(_NESTING_STEP.__getitem__, brackets))
    )


def _msgpack_deeper_than(data: bytes | bytearray | memoryview | str, limit: int) -> bool:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    # Depth cannot exceed the number of bytes that may open a container (in C, as for JSON).
    if len(raw.translate(None, _NOT_MSGPACK_OPENERS)) <= limit:
        return False
    try:
        value: Any = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return False  # the typed decoder says what is wrong with it
    except RecursionError:
        return True  # deeper than this interpreter decodes, so deeper than any limit
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = _children(item)
        if children is not None:
            depth += 1
            if depth > limit:
                return True
            stack.extend((child, depth) for child in children)
    return False


def _children(item: object) -> Iterable[object] | None:
    """What a decoded container holds (a map's keys too), or None for a scalar."""
    if isinstance(item, dict):
        mapping = cast("dict[object, object]", item)
        return itertools.chain(mapping.keys(), mapping.values())
    if isinstance(item, list | tuple):
        return cast("list[object]", item)
    return None


def encode(value: object, serializer: str = "json") -> bytes:
    """Encode `value` as JSON (or msgpack): builtins, Structs, dataclasses, datetimes,
    UUIDs, Decimals..."""
    try:
        if serializer == "json":
            return _encoder.encode(value)
        return _msgpack_encoder.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        name = "JSON" if serializer == "json" else serializer
        raise TypeError(f"cannot encode a {type(value).__name__} as {name}: {exc}") from None


def encode_body(value: object, serializer: str = "json") -> tuple[bytes, str, str]:
    """Encode a body to publish: its data, content type and content encoding.

    `bytes`, `bytearray` and `memoryview` bodies go as they are, labelled `RAW_BYTES`;
    anything else is encoded with `serializer` and labelled as `CONTENT_TYPES` says.

    Raises:
        TypeError: `value` cannot be encoded with `serializer`.

    Example:
        >>> encode_body(b"\\x00\\x01")
        (b'\\x00\\x01', 'application/data', 'binary')
        >>> encode_body({"id": 1})
        (b'{"id":1}', 'application/json', 'utf-8')
    """
    if type(value) is bytes:
        return value, *RAW_BYTES
    if isinstance(value, bytes | bytearray):
        return bytes(value), *RAW_BYTES
    if isinstance(value, memoryview):
        return cast("memoryview[int]", value).tobytes(), *RAW_BYTES
    content_type, content_encoding = CONTENT_TYPES[serializer]
    return encode(value, serializer), content_type, content_encoding


def to_builtins(value: object) -> Any:
    """Convert Structs, dataclasses and friends into JSON-compatible builtins."""
    return msgspec.to_builtins(value)


def annotation_of(func: Callable[..., Any], parameter: str) -> Any:
    """Return the resolved annotation of `parameter` of `func`, or `Any` when it has none.

    Only that parameter's annotation is evaluated: a return type or another parameter
    annotated with a name imported under `TYPE_CHECKING` does not get in the way.
    Names are looked up in the function's module, then in its closure.

    Raises:
        ConfigurationError: The annotation cannot be resolved (a name that does not exist).
    """
    target = inspect.unwrap(func)
    target = getattr(target, "__func__", target)  # bound methods
    annotations: dict[str, Any] = getattr(target, "__annotations__", None) or {}
    if parameter not in annotations:
        return Any
    code = getattr(target, "__code__", None)
    closure = getattr(target, "__closure__", None) or ()
    local_names: dict[str, Any] = {}
    if code is not None:
        for name, cell in zip(code.co_freevars, closure, strict=False):
            try:
                local_names[name] = cell.cell_contents
            except ValueError:  # an empty cell: the name is not bound yet
                continue
    holder = types.SimpleNamespace(__annotations__={parameter: annotations[parameter]})
    try:
        hints = typing.get_type_hints(
            holder,
            globalns=getattr(target, "__globals__", {}),
            localns=local_names,
            include_extras=True,
        )
    except Exception as exc:  # NameError, TypeError... from a user's annotation
        raise ConfigurationError(
            f"cannot resolve the annotation of {parameter!r} of {_name(func)}: {exc}"
        ) from None
    return hints.get(parameter, Any)


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


class BodyDecoder:
    """Decode bodies into one type, with a size limit and clear errors.

    JSON, unless the message's content type says otherwise (see the module's docstring).

    Args:
        type: The target type (a Struct, dataclass, TypedDict, builtins, generics, unions).
        where: Names the handler in the start-up error when msgspec cannot decode `type`.
        max_size: Bodies larger than this many bytes are rejected before decoding.
        max_depth: Bodies whose arrays and objects nest deeper than this are rejected
            before decoding (see `check_depth`).
    """

    __slots__ = ("_decoder", "_msgpack", "max_depth", "max_size", "type")

    def __init__(
        self,
        type: Any = Any,
        *,
        where: str = "",
        max_size: int = DEFAULT_MAX_BODY_SIZE,
        max_depth: int = DEFAULT_BODY_MAX_DEPTH,
    ) -> None:
        try:
            check_decodable(type)
            self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(type)
        except TypeError as exc:
            raise ConfigurationError(
                f"{where or 'body'}: msgspec cannot decode the annotation {type!r}: {exc}"
            ) from None
        self.type = type
        self.max_size = max_size
        self.max_depth = max_depth
        self._msgpack: msgspec.msgpack.Decoder[Any] | None = None

    def decode(
        self,
        data: bytes | bytearray | memoryview | str,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> Any:
        """Decode `data` into the target type, as its `content_type` says (default: JSON).

        Raises:
            BadBody: With the reason (too large, invalid JSON, wrong type, nested deeper
                than `max_depth`, a
                content type or encoding farine does not read).
        """
        if len(data) > self.max_size:
            raise BadBody(f"body of {len(data)} bytes exceeds max_body_size ({self.max_size})")
        if (
            content_encoding
            and content_encoding != "utf-8"
            and content_encoding.lower() not in _PLAIN_ENCODINGS
        ):
            raise BadBody(f"unsupported content encoding {content_encoding!r}")
        if content_type and content_type != "application/json":
            return self._decode_as(data, content_type)
        return self._json(data)

    def _json(self, data: bytes | bytearray | memoryview | str) -> Any:
        check_depth(data, self.max_depth, "JSON")
        return self._with(self._decoder.decode, data, "JSON")

    def _with(self, decode: Callable[[Any], Any], data: object, format: str) -> Any:
        try:
            return decode(data)
        except msgspec.ValidationError as exc:
            raise BadBody(f"does not match {_type_name(self.type)}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise BadBody(f"invalid {format}: {exc}") from None
        except RecursionError:  # a safety net: check_depth rejects such bodies first
            raise BadBody(f"{format} nested too deeply") from None

    def _decode_as(self, data: bytes | bytearray | memoryview | str, content_type: str) -> Any:
        media, _, params = content_type.partition(";")
        media = media.strip().lower()
        if media in _JSON_TYPES or media.endswith("+json"):
            return self._json(data)
        if media in _MSGPACK_TYPES:
            return self._msgpack_decode(data)
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if media.startswith("text/") and self.type in (str, Any):
            charset = "utf-8"
            for param in params.split(";"):
                key, _, value = param.partition("=")
                if key.strip().lower() == "charset" and value.strip():
                    charset = value.strip().strip('"')
            try:
                return raw.decode(charset)
            except (LookupError, UnicodeDecodeError) as exc:
                raise BadBody(f"undecodable {media} text: {exc}") from None
        if media in _RAW_TYPES and self.type in (bytes, Any):
            return raw
        if media.startswith("text/"):
            return self._json(data)  # some tools label JSON as text
        wants = _type_name(self.type)
        raise BadBody(
            f"unsupported content type {content_type!r} for a {wants} body (farine reads "
            "JSON, msgpack and text; application/data and application/octet-stream into bytes)"
        )

    def _msgpack_decode(self, data: bytes | bytearray | memoryview | str) -> Any:
        decoder = self._msgpack
        if decoder is None:
            decoder = self._msgpack = msgspec.msgpack.Decoder(self.type)
        raw = data.encode() if isinstance(data, str) else data
        check_depth(raw, self.max_depth, "msgpack")
        return self._with(decoder.decode, raw, "msgpack")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)
