"""The RPC wire format (baguette-messaging's, plus optional keys) and argument binding.

Request, published to exchange `<service>` with routing key `<service>__<method>`,
`reply_to` and `correlation_id` set::

    {"args": [...], "kwargs": {...}}

Replies, published to `reply_to` with the request's `correlation_id`::

    {"body": <value>, "__end__": false}     one per item (one for a plain return value)
    {"__end__": true}                        after the last item
    {"__except__": "<summary>", "error": {"type": ..., "message": ..., "data": ..., "args": [...]}}

`__except__` holds the traceback text only when the server's `rpc_send_traceback` setting
is on; else a one-line `Type: message` with no file path. `args` is sent for the errors a
method declares (`method(errors=...)`): the caller rebuilds them (`farine.rpc._errors`).

farine adds, never removes: the `error` envelope; and, for a caller that announces it
wants a single value (header `x-farine-unary`), the value and the end marker in one
message `{"body": <value>, "__end__": true}`, which halves the replies of plain calls.

Streams: the first reply names the server instance's control queue (header
`x-farine-control`), where the caller sends, as JSON:

    {"cancel": "<correlation id>"}                  stop the stream
    {"credit": "<correlation id>", "read": <n>}     the caller has read n items

A caller that announces a window (header `x-farine-window: <w>` on the request) is sent
at most `read + w` items: the server waits for credit before producing more. Without the
header (a baguette-messaging caller), the server sends items as fast as it makes them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

from farine._tracebacks import format_user_exception
from farine.codec import (
    DEFAULT_BODY_MAX_DEPTH,
    BadBody,
    annotation_of,
    check_decodable,
    check_depth,
)
from farine.exceptions import ConfigurationError, RemoteError, RPCError
from farine.rpc._errors import encode_args, rebuild_error, safe_message

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "END",
    "HEADER_CONTEXT",
    "HEADER_CONTROL",
    "HEADER_DEADLINE",
    "HEADER_UNARY",
    "HEADER_WINDOW",
    "ArgumentBinder",
    "BadArguments",
    "Control",
    "Reply",
    "encode_error",
    "encode_item",
    "encode_request",
    "error_from_reply",
    "presence_key",
    "routing_key",
)

#: Absolute deadline of a call (seconds since the epoch, as text).
HEADER_DEADLINE: Final = "x-farine-deadline"
#: The caller's headers (`client.with_headers()`), a table of strings, passed on by
#: the calls that the method makes in turn.
HEADER_CONTEXT: Final = "x-farine-headers"
#: Present when the caller wants one value: the server may fold the end marker into it.
HEADER_UNARY: Final = "x-farine-unary"
#: On a stream's first reply: the queue where the caller sends a cancel for this stream.
HEADER_CONTROL: Final = "x-farine-control"
#: On a stream request: how many unread items the caller lets the server send ahead.
HEADER_WINDOW: Final = "x-farine-window"

END: Final = b'{"__end__":true}'

_encoder = msgspec.json.Encoder()


def routing_key(service: str, method: str) -> str:
    """The routing key of `service.method` requests (the seed's `<service>__<method>`)."""
    return f"{service}__{method}"


def presence_key(service: str) -> str:
    """The routing key that reaches every running farine server of `service`.

    Each server binds its control queues with it, so a caller whose request came back
    unroutable can tell a missing method (something answers this key) from a service
    that nothing serves. It never collides with a method's `<service>__<method>`.
    """
    return f"{service}.farine-presence"


class _Request(msgspec.Struct, omit_defaults=True):
    args: list[msgspec.Raw] = msgspec.field(default_factory=list[msgspec.Raw])
    kwargs: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict[str, msgspec.Raw])


class _Item(msgspec.Struct):
    body: Any
    end: bool = msgspec.field(name="__end__")


class ErrorInfo(msgspec.Struct, omit_defaults=True):
    """The typed part of an error reply."""

    type: str
    message: str
    data: Any = None
    #: The exception's `args`, for errors the method declares.
    args: list[msgspec.Raw] | None = None


class _ErrorReply(msgspec.Struct, omit_defaults=True):
    except_: str = msgspec.field(name="__except__")
    error: ErrorInfo | None = None


class Reply(msgspec.Struct, omit_defaults=True):
    """One reply message as the client reads it (any of the three shapes)."""

    body: Any = None
    end: bool = msgspec.field(name="__end__", default=False)
    except_: str | None = msgspec.field(name="__except__", default=None)
    error: ErrorInfo | None = None
    has_body: bool = False


class Control(msgspec.Struct, omit_defaults=True):
    """A message of a stream's caller to the server's control queue."""

    cancel: str | None = None
    credit: str | None = None
    read: int = 0


_request_decoder = msgspec.json.Decoder(_Request)
_reply_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_error_decoder = msgspec.json.Decoder(ErrorInfo | None)


def encode_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Encode a call's arguments in the seed's request format."""
    try:
        return _encoder.encode({"args": args, "kwargs": kwargs})
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"cannot encode the call's arguments as JSON: {exc}") from None


def encode_item(value: Any, *, end: bool = False) -> bytes:
    """Encode one result item (`end=True` folds the end marker in, for unary callers)."""
    return _encoder.encode(_Item(value, end))


def encode_error(
    exc: BaseException, *, send_traceback: bool, data: Any = None, declared: bool = False
) -> bytes:
    """Encode an error reply: the seed's `__except__` text plus the typed envelope.

    Args:
        exc: The exception the method raised.
        send_traceback: Send the traceback text and the message as it is; else a
            one-line message with file paths replaced by `<path>`.
        data: Structured data about the error (the exception's `rpc_data`).
        declared: The method declares this error: its `args` are sent too.
    """
    name = type(exc).__name__
    if send_traceback:
        message = str(exc)
        text = format_user_exception(exc)
    else:
        message = safe_message(exc)
        text = f"{name}: {message}" if message else name
    args = encode_args(exc) if declared else None
    reply = _ErrorReply(text, ErrorInfo(name, message, data, args))
    try:
        return _encoder.encode(reply)
    except (TypeError, msgspec.EncodeError):
        # Undecodable `data`: drop it, keep the error.
        reply.error = ErrorInfo(name, message, None, args)
        return _encoder.encode(reply)


def decode_reply(
    data: bytes,
    max_depth: int = DEFAULT_BODY_MAX_DEPTH,
    body: msgspec.json.Decoder[Any] | None = None,
    where: str = "RPC",
) -> Reply:
    """Decode one reply message.

    Args:
        data: The reply's body.
        max_depth: The deepest nesting its value may have (`body_max_depth`).
        body: Decodes the value (the method's return annotation); default: any JSON.
        where: `service.method`, for error messages.

    Raises:
        RPCError: The reply is not one of the three shapes, or nests deeper than
            `max_depth` (the same limit on every Python).
        RemoteError: The value does not decode with `body` (the message names the field).
    """
    try:
        check_depth(data, max_depth + 1)  # the value sits in {"body": ...}
    except BadBody as exc:
        raise RPCError(f"malformed RPC reply: {exc}") from None
    try:
        fields = _reply_decoder.decode(data)
        reply = Reply()
        if "body" in fields:
            if body is None:
                reply.body = _any_decoder.decode(fields["body"])
            else:
                try:
                    reply.body = body.decode(fields["body"])
                except msgspec.ValidationError as exc:
                    raise RemoteError(
                        f"{where}: the reply does not match the method's return type: {exc}"
                    ) from None
            reply.has_body = True
        if "__end__" in fields:
            reply.end = bool(_any_decoder.decode(fields["__end__"]))
        if "__except__" in fields:
            text = _any_decoder.decode(fields["__except__"])
            reply.except_ = str(text) if text is not None else None
        if "error" in fields:
            reply.error = _error_decoder.decode(fields["error"])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RPCError(f"malformed RPC reply: {exc}") from None
    return reply


def error_from_reply(reply: Reply, where: str) -> BaseException:
    """Build the exception a client raises for an error reply.

    A registered error whose `args` came along is rebuilt as itself; anything else is a
    `RemoteError`.
    """
    text = reply.except_ or ""
    data: Any = None
    problem = ""
    if reply.error is not None:
        remote_type, remote_message = reply.error.type, reply.error.message
        data = reply.error.data
        if reply.error.args is not None:
            try:
                rebuilt = rebuild_error(remote_type, reply.error.args)
            except ValueError as exc:
                problem = f" (not rebuilt: {exc})"
            else:
                if rebuilt is not None:
                    rebuilt.add_note(f"raised by the remote method {where}")
                    return rebuilt
    else:
        # A seed server sends only the traceback text; its last line is "Type: message".
        last = text.strip().splitlines()[-1] if text.strip() else ""
        remote_type, _, remote_message = last.partition(": ")
    has_traceback = text.startswith("Traceback")
    summary = f"{remote_type}: {remote_message}" if remote_message else remote_type
    return RemoteError(
        f"{where} failed: {summary or 'remote error'}{problem}",
        remote_type=remote_type or None,
        remote_message=remote_message,
        remote_traceback=text if has_traceback else None,
        remote_data=data,
    )


class BadArguments(RPCError):
    """The call's arguments do not fit the method's signature or annotations."""


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    kind: int  # an `inspect.Parameter` kind (they are ints), named without its private type
    decoder: msgspec.json.Decoder[Any]


class ArgumentBinder:
    """Decode a request's arguments into a method's parameter annotations.

    Built once per RPC method, when it is bound: one msgspec decoder per parameter.
    Unannotated parameters take the JSON value as sent.
    """

    def __init__(
        self, method: Callable[..., Any], where: str, max_depth: int = DEFAULT_BODY_MAX_DEPTH
    ) -> None:
        self.where = where
        #: The deepest nesting an argument may have (`body_max_depth`).
        self.max_depth = max_depth
        try:
            self.signature = inspect.signature(method)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the signature of {where}: {exc}") from None
        self._params: dict[str, _Param] = {}
        for name, parameter in self.signature.parameters.items():
            annotation = annotation_of(method, name)
            try:
                check_decodable(annotation)
                decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(annotation)
            except TypeError as exc:
                raise ConfigurationError(
                    f"parameter {name!r}: msgspec cannot decode {annotation!r}: {exc}"
                ) from None
            self._params[name] = _Param(name, parameter.kind, decoder)
        # A call that passes every parameter by position (the usual case, and the seed's)
        # needs no `Signature.bind`: possible when all parameters are positional.
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._all_positional: tuple[_Param, ...] | None = (
            tuple(self._params.values())
            if all(param.kind in positional for param in self._params.values())
            else None
        )

    def bind(self, data: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Return `(args, kwargs)` decoded from request `data`.

        Raises:
            BadArguments: Invalid JSON, arguments that do not fit the signature, or an
                argument that does not decode into its parameter's annotation.
        """
        try:
            check_depth(data, self.max_depth + 2)  # arguments sit in {"args": [...]}
        except BadBody as exc:
            raise BadArguments(f"{self.where}: malformed request: {exc}") from None
        try:
            request = _request_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadArguments(f"{self.where}: malformed request: {exc}") from None
        except RecursionError:
            raise BadArguments(f"{self.where}: malformed request: nested too deeply") from None
        params = self._all_positional
        if params is not None and not request.kwargs and len(request.args) == len(params):
            decode = self._decode
            return tuple(decode(p, raw) for p, raw in zip(params, request.args, strict=True)), {}
        try:
            bound = self.signature.bind(*request.args, **request.kwargs)
        except TypeError as exc:
            raise BadArguments(f"{self.where}: {exc}") from None
        for name, raw in bound.arguments.items():
            param = self._params[name]
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                bound.arguments[name] = tuple(self._decode(param, item) for item in raw)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {k: self._decode(param, v, k) for k, v in raw.items()}
            else:
                bound.arguments[name] = self._decode(param, raw)
        return bound.args, bound.kwargs

    def _decode(self, param: _Param, raw: msgspec.Raw, key: str | None = None) -> Any:
        try:
            return param.decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            shown = f"{param.name}[{key!r}]" if key is not None else param.name
            raise BadArguments(f"{self.where}: argument {shown!r}: {exc}") from None
        except RecursionError:
            raise BadArguments(
                f"{self.where}: argument {param.name!r}: nested too deeply"
            ) from None
