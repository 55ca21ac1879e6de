"""Build the AsyncAPI 3.0 document of the services of one or more modules.

How each entrypoint maps to AsyncAPI (docs/design.md explains why):

- a consumer is a `receive` operation on a channel that is its queue (AMQP binding
  `is: queue`); the exchange and routing keys it is bound with are the operation's `cc`
  and the binding's `x-farine-exchange` extension (binding 0.3.0 describes an exchange
  or a queue, never both);
- a publisher (`@farine.amqp.publish`, or a `Publisher` class attribute) is a `send`
  operation on a channel that is a routing key of an exchange (`is: routingKey`);
- an RPC method is a `receive` operation on its request queue, with a `reply` sent to
  the request's `reply_to` (RabbitMQ's direct reply-to, `amq.rabbitmq.reply-to`): one
  result then the end marker, or the items of a stream then the end marker, or the
  error envelope; a streaming method also receives cancels and credits on its control
  queue;
- an SSE listener is a `receive` operation on the HTTP server of its endpoint;
- an execute method exchanges no message: the service's description lists it.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec

from farine import settings as farine_settings
from farine.amqp import AsyncPublisher, ConsumeSpec, Publisher, PublishSpec, publish_specs
from farine.codec import CONTENT_TYPES, annotation_of
from farine.discovery import discover
from farine.exceptions import ConfigurationError
from farine.execute import ExecuteSpec
from farine.rpc import MethodSpec
from farine.rpc._protocol import (
    HEADER_CONTROL,
    HEADER_DEADLINE,
    HEADER_UNARY,
    HEADER_WINDOW,
    Control,
    ErrorInfo,
    routing_key,
)
from farine.stream import HttpStreamSpec

from ._schemas import SchemaSet, is_stream_annotation, return_annotation, stream_item_type

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from farine.discovery import ServiceDefinition
    from farine.settings import Config, ServiceSettings

__all__ = ("ASYNCAPI_VERSION", "build_document", "describe_services")

logger = logging.getLogger("farine.asyncapi")

#: The AsyncAPI version of the documents.
ASYNCAPI_VERSION: Final = "3.0.0"
#: The version of the AMQP bindings the documents use.
AMQP_BINDING_VERSION: Final = "0.3.0"
#: RabbitMQ's direct reply-to pseudo-queue, where farine callers read their replies.
DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"

JSON: Final = "application/json"

_CORRELATION_ID: Final = {
    "description": "The AMQP `correlation_id` property: a reply carries its request's.",
    "location": "$message.header#/correlation_id",
}
_REPLY_ADDRESS: Final = {
    "description": (
        f"The request's AMQP `reply_to` property: `{DIRECT_REPLY_TO}` (RabbitMQ's direct "
        "reply-to) from a farine caller, the caller's own reply queue from a "
        "baguette-messaging one. Replies are published to the default exchange with it "
        "as the routing key."
    ),
    "location": "$message.header#/reply_to",
}
_REQUEST_HEADERS: Final = {
    "type": "object",
    "properties": {
        HEADER_DEADLINE: {
            "type": "string",
            "description": "Absolute deadline of the call, in seconds since the epoch; "
            "the server drops a call whose deadline passed and cancels one that outlives it.",
        },
        HEADER_UNARY: {
            "type": "integer",
            "description": "Present when the caller reads one value: the server may fold "
            "the end marker into the result (`__end__: true`).",
        },
        HEADER_WINDOW: {
            "type": "integer",
            "minimum": 1,
            "description": "A stream's window: at most this many items beyond those the "
            "caller reported read (credits on the control queue) are sent ahead.",
        },
    },
}
_REPLY_HEADERS: Final = {
    "type": "object",
    "properties": {
        HEADER_CONTROL: {
            "type": "string",
            "description": "On the first reply of a call (unless the caller sent "
            f"`{HEADER_UNARY}`): the server's control queue, where the caller sends "
            "cancels and credits.",
        }
    },
}

_ID_UNSAFE = re.compile(r"[^\w.-]")


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    return text.strip().splitlines()[0].strip() or None


def _ref(*parts: str) -> dict[str, str]:
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in parts)
    return {"$ref": "#/" + "/".join(escaped)}


@dataclass
class _ServiceNotes:
    """What the service's description says, besides its operations."""

    name: str
    cls: type
    #: What the service does ("consumes", "serves over RPC", ...) -> its methods.
    roles: dict[str, list[str]] = field(default_factory=dict[str, list[str]])

    def add(self, role: str, method: str, note: str = "") -> None:
        names = self.roles.setdefault(role, [])
        shown = f"`{method}`{note}"
        if shown not in names:
            names.append(shown)


class _Builder:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.schemas = SchemaSet()
        self.servers: dict[str, dict[str, Any]] = {}
        self._server_keys: dict[tuple[str, ...], str] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.notes: list[_ServiceNotes] = []
        self.uses_rpc = False
        # (exchange, type, routing keys, message) of each consumer, and the same with
        # the (open) message of each publisher: see `_link_publishers()`.
        self._consumed: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = []
        self._published: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = []

    # -- identifiers and servers --------------------------------------------------------

    @staticmethod
    def _unique(wanted: str, taken: dict[str, Any]) -> str:
        base = _ID_UNSAFE.sub("_", wanted)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}.{n}"
        return name

    def _server(self, key: tuple[str, ...], prefix: str, server: dict[str, Any]) -> str:
        found = self._server_keys.get(key)
        if found is not None:
            return found
        name, n = prefix, 1
        while name in self.servers:
            n += 1
            name = f"{prefix}-{n}"
        self.servers[name] = server
        self._server_keys[key] = name
        return name

    def _amqp_server(self, settings: ServiceSettings) -> tuple[list[dict[str, str]], str | None]:
        """The `servers` of the service's AMQP channels, and its virtual host.

        A `memory://` broker is in-process: no server other processes could reach.
        """
        parts = urllib.parse.urlsplit(settings.amqp_uri)
        if parts.scheme not in ("amqp", "amqps"):
            return [], None
        try:
            port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        except ValueError:
            port = 5671 if parts.scheme == "amqps" else 5672
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        server = {
            "host": f"{host}:{port}",
            "protocol": parts.scheme,
            "protocolVersion": "0.9.1",
            "description": f"RabbitMQ (virtual host `{vhost}`).",
        }
        name = self._server((parts.scheme, host, str(port), vhost), "rabbitmq", server)
        return [_ref("servers", name)], vhost

    # -- services ------------------------------------------------------------------------

    def add_service(self, service: ServiceDefinition) -> None:
        settings = self.config.service(service.name)
        notes = _ServiceNotes(service.name, service.cls)
        self.notes.append(notes)
        servers, vhost = self._amqp_server(settings)
        amqp = _Amqp(servers, vhost, settings)
        for attr, spec in service.entrypoints:
            func = cast("Callable[..., Any]", getattr(service.cls, attr))
            if isinstance(spec, ConsumeSpec):
                parameters = _call_parameters(service.cls, attr, func)
                self._consumer(notes, attr, func, spec, amqp, parameters)
            elif isinstance(spec, MethodSpec):
                parameters = _call_parameters(service.cls, attr, func)
                self._rpc(notes, attr, func, amqp, parameters, spec.errors)
            elif isinstance(spec, HttpStreamSpec):
                parameters = _call_parameters(service.cls, attr, func)
                self._sse(notes, attr, func, spec, settings, parameters)
            elif isinstance(spec, ExecuteSpec):
                notes.add("runs", attr, " (long-running, no messages of its own)")
            else:
                notes.add(f"has {spec.kind} entrypoints (not described)", attr)
        for attr, target in _publishers(service.cls):
            if isinstance(target, PublishSpec):
                exchange = target.exchange if target.exchange is not None else service.name
                keys = target.routing_keys if target.routing_keys is not None else (service.name,)
                kind = target.exchange_type or settings.type
                self._publisher(notes, attr, exchange, keys, kind, amqp)
            else:
                keys = target.routing_key
                keys = (keys,) if isinstance(keys, str) else tuple(keys)
                own = _Amqp(*self._amqp_server(target.settings), target.settings)
                self._publisher(notes, attr, target.exchange, keys, target.exchange_type, own)

    def _operation(
        self,
        notes: _ServiceNotes,
        wanted: str,
        operation: dict[str, Any],
        func: Callable[..., Any] | None = None,
    ) -> None:
        name = self._unique(wanted, self.operations)
        doc = inspect.getdoc(func) if func is not None else None
        summary = _first_line(doc)
        head: dict[str, Any] = {"action": operation.pop("action")}
        if summary:
            head["summary"] = summary
        head.update(operation)
        head["tags"] = [{"name": notes.name}]
        self.operations[name] = head

    def _channel(self, wanted: str, channel: dict[str, Any]) -> str:
        name = self._unique(wanted, self.channels)
        self.channels[name] = channel
        return name

    # -- consumers and publishers --------------------------------------------------------

    def _consumer(
        self,
        notes: _ServiceNotes,
        attr: str,
        func: Callable[..., Any],
        spec: ConsumeSpec,
        amqp: _Amqp,
        parameters: list[inspect.Parameter],
    ) -> None:
        # baguette-messaging 0.19's defaults, as `farine.amqp.consume` applies them.
        settings = amqp.settings
        service = notes.name
        exchange = spec.exchange or service
        keys = spec.routing_keys or (service,)
        kind = spec.exchange_type or "direct"
        if spec.queue is not None:
            queue = spec.queue
        elif len(spec.routing_keys) == 1:
            queue = spec.routing_keys[0]
        else:
            queue = service
        # The body is the first parameter, whatever its name.
        body = annotation_of(func, parameters[0].name) if parameters else Any
        notes.add("consumes", attr)
        shown_keys = ", ".join(f"`{key}`" for key in keys)
        binding: dict[str, Any] = {
            "is": "queue",
            "queue": amqp.vhosted(
                {
                    "name": queue,
                    "durable": _pick(spec.durable, settings.durable),
                    "exclusive": _pick(spec.exclusive, settings.exclusive),
                    "autoDelete": _pick(spec.auto_delete, settings.auto_delete),
                }
            ),
            "x-farine-exchange": amqp.vhosted(
                {"name": exchange, "type": kind, "durable": settings.durable, "autoDelete": False}
            ),
            "x-farine-routing-keys": list(keys),
            "bindingVersion": AMQP_BINDING_VERSION,
        }
        if spec.queue_arguments:
            binding["x-farine-queue-arguments"] = msgspec.to_builtins(dict(spec.queue_arguments))
        message = self._message(f"{service}.{attr}", body, open_when_any=True)
        if body is not Any:
            self._consumed.append((exchange, kind, keys, message))
        message["description"] = (
            "JSON; msgpack too, by its content type. A body that does not decode is "
            "rejected without requeue (dead-lettered where the queue has a dead-letter "
            "exchange)."
        )
        channel = self._channel(
            f"{service}.{attr}",
            {
                "address": queue,
                "title": f"{service}.{attr}",
                "description": f"The queue `{queue}`, bound to the {kind} exchange "
                f"`{exchange}` with the routing key(s) {shown_keys}.",
                **amqp.servers_field(),
                "messages": {"body": message},
                "bindings": {"amqp": binding},
            },
        )
        self._operation(
            notes,
            f"{service}.{attr}",
            {
                "action": "receive",
                "channel": _ref("channels", channel),
                "messages": [_ref("channels", channel, "messages", "body")],
                "bindings": {
                    "amqp": {"cc": list(keys), "ack": True, "bindingVersion": AMQP_BINDING_VERSION}
                },
            },
            func,
        )

    def _publisher(
        self,
        notes: _ServiceNotes,
        attr: str,
        exchange: str,
        keys: tuple[str, ...],
        kind: str,
        amqp: _Amqp,
    ) -> None:
        settings = amqp.settings
        service = notes.name
        content_type = CONTENT_TYPES.get(settings.serializer, (JSON, ""))[0]
        notes.add("publishes from", attr)
        published: dict[str, Any] = {
            "name": f"{service}.{attr}.publish",
            "contentType": content_type,
            "payload": self.schemas.add(Any, open_when_any=True),
        }
        self._published.append((exchange, kind, keys, published))
        shown_keys = ", ".join(f"`{key}`" for key in keys)
        channel = self._channel(
            f"{service}.{attr}.publish",
            {
                "address": keys[0] if len(keys) == 1 else None,
                "title": f"{service}.{attr} publishes",
                "description": f"The {kind} exchange `{exchange or '(default)'}`, routing "
                f"key(s) {shown_keys} (a call may give another routing key).",
                **amqp.servers_field(),
                "messages": {"body": published},
                "bindings": {
                    "amqp": {
                        "is": "routingKey",
                        "exchange": amqp.vhosted(
                            {
                                "name": exchange,
                                "type": kind if exchange else "default",
                                "durable": settings.durable,
                                "autoDelete": settings.auto_delete,
                            }
                        ),
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
            },
        )
        self._operation(
            notes,
            f"{service}.{attr}.publish",
            {
                "action": "send",
                "channel": _ref("channels", channel),
                "messages": [_ref("channels", channel, "messages", "body")],
                "bindings": {
                    "amqp": {
                        "cc": list(keys),
                        "deliveryMode": settings.delivery_mode,
                        "mandatory": True,
                        "timestamp": True,
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
            },
        )

    # -- RPC -----------------------------------------------------------------------------

    def _rpc(
        self,
        notes: _ServiceNotes,
        attr: str,
        func: Callable[..., Any],
        amqp: _Amqp,
        parameters: list[inspect.Parameter],
        errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.uses_rpc = True
        settings = amqp.settings
        service = notes.name
        key = routing_key(service, attr)
        returned = return_annotation(func)
        stream = (
            inspect.isgeneratorfunction(func)
            or inspect.isasyncgenfunction(func)
            or is_stream_annotation(returned)
        )
        value = stream_item_type(returned) if stream else returned
        notes.add("serves over RPC", attr, " (a stream)" if stream else "")
        qualname = f"{service}.{attr}"
        request_channel = self._channel(
            qualname,
            {
                "address": key,
                "title": f"{qualname} requests",
                "description": f"The queue `{key}`, bound to the direct exchange `{service}` "
                f"with the routing key `{key}`: publish a call there with `reply_to` and "
                "`correlation_id` set.",
                **amqp.servers_field(),
                "messages": {
                    "request": {
                        "name": f"{qualname}.request",
                        "title": f"{qualname} call",
                        "contentType": JSON,
                        "headers": dict(_REQUEST_HEADERS),
                        "correlationId": dict(_CORRELATION_ID),
                        "payload": self._arguments(func, qualname, parameters),
                    }
                },
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": amqp.vhosted(
                            {
                                "name": key,
                                "durable": settings.durable,
                                "exclusive": False,
                                "autoDelete": False,
                            }
                        ),
                        "x-farine-exchange": amqp.vhosted(
                            {
                                "name": service,
                                "type": "direct",
                                "durable": settings.durable,
                                "autoDelete": False,
                            }
                        ),
                        "x-farine-routing-keys": [key],
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
            },
        )
        value_schema = self.schemas.add(value)
        if stream:
            first = "item"
            first_message: dict[str, Any] = {
                "name": f"{qualname}.item",
                "title": f"{qualname} stream item",
                "summary": "One item of the stream, in the order the method yields them.",
                "contentType": JSON,
                "headers": dict(_REPLY_HEADERS),
                "correlationId": dict(_CORRELATION_ID),
                "payload": _item_schema(
                    value_schema,
                    "`true` only when the caller asked for one value (header "
                    f"`{HEADER_UNARY}`): the first item, then nothing more.",
                ),
            }
            sequence = (
                "Replies: zero or more `item` messages, then the `end` marker; or, at any "
                "point, the `error` envelope instead of the rest. A caller that announced "
                "a unary call gets the first item alone, with `__end__: true`."
            )
        else:
            first = "result"
            first_message = {
                "name": f"{qualname}.result",
                "title": f"{qualname} result",
                "summary": "The method's return value.",
                "contentType": JSON,
                "headers": dict(_REPLY_HEADERS),
                "correlationId": dict(_CORRELATION_ID),
                "payload": _item_schema(
                    value_schema,
                    "`true` when the end marker is folded in (a caller that sent header "
                    f"`{HEADER_UNARY}`); otherwise the `end` marker follows.",
                ),
            }
            sequence = (
                "Replies: the `result` then the `end` marker (or the `result` alone with "
                "`__end__: true` for a unary caller); or the `error` envelope."
            )
        reply_channel = self._channel(
            f"{qualname}.reply",
            {
                "address": None,
                "title": f"{qualname} replies",
                "description": f"The caller's reply address (its `reply_to`). {sequence}",
                **amqp.servers_field(),
                "messages": {
                    first: first_message,
                    "end": _ref("components", "messages", "rpcEnd"),
                    "error": _ref("components", "messages", "rpcError"),
                },
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": amqp.vhosted({"name": DIRECT_REPLY_TO}),
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
            },
        )
        operation: dict[str, Any] = {
            "action": "receive",
            "description": sequence,
            "channel": _ref("channels", request_channel),
            "messages": [_ref("channels", request_channel, "messages", "request")],
            "reply": {
                "address": dict(_REPLY_ADDRESS),
                "channel": _ref("channels", reply_channel),
                "messages": [
                    _ref("channels", reply_channel, "messages", name)
                    for name in (first, "end", "error")
                ],
            },
            "bindings": {
                "amqp": {"cc": [key], "ack": True, "bindingVersion": AMQP_BINDING_VERSION}
            },
        }
        if errors:
            # The method's declared errors (`method(errors=...)`): callers that register
            # them get them re-raised as themselves, built from the envelope's `args`.
            operation["x-farine-errors"] = [self._declared_error(error) for error in errors]
        if stream:
            operation["x-farine-stream"] = {
                "items": _ref("channels", reply_channel, "messages", first),
                "end": _ref("channels", reply_channel, "messages", "end"),
            }
        self._operation(notes, qualname, operation, func)
        if stream:
            self._control(notes, qualname, amqp)

    def _declared_error(self, error: type[BaseException]) -> dict[str, Any]:
        """How a declared error arrives: its `type` in the error envelope, and the schemas
        of the `args` its constructor takes, in order."""
        described: dict[str, Any] = {"type": error.__name__}
        summary = _first_line(error.__doc__)
        if summary:
            described["summary"] = summary
        init = error.__init__
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # a builtin's __init__: any arguments
            return {**described, "args": {"type": "array"}}
        items: list[Any] = []
        rest: Any = None
        for index, (name, parameter) in enumerate(signature.parameters.items()):
            if index == 0 and inspect.isfunction(init):
                continue  # self
            if parameter.kind in positional:
                items.append(self.schemas.add(annotation_of(init, name)))
            elif parameter.kind == parameter.VAR_POSITIONAL:
                rest = self.schemas.add(annotation_of(init, name))
        args: dict[str, Any] = {"type": "array", "items": items}
        if rest is not None:
            args["additionalItems"] = rest
        return {**described, "args": args}

    def _control(self, notes: _ServiceNotes, qualname: str, amqp: _Amqp) -> None:
        channel = self._channel(
            f"{qualname}.control",
            {
                "address": None,
                "title": f"{qualname} stream control",
                "description": "The control queue of one server instance, named by the "
                f"`{HEADER_CONTROL}` header of a stream's first reply: a caller stops a "
                "stream (`cancel`) or reports how many items it read (`credit`, `read`).",
                **amqp.servers_field(),
                "messages": {
                    "control": {
                        "name": f"{qualname}.control",
                        "contentType": JSON,
                        "payload": self.schemas.add(Control),
                    }
                },
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": amqp.vhosted(
                            {"durable": False, "exclusive": True, "autoDelete": True}
                        ),
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
            },
        )
        self._operation(
            notes,
            f"{qualname}.control",
            {
                "action": "receive",
                "summary": "Cancels and credits of the streams this instance serves.",
                "channel": _ref("channels", channel),
                "messages": [_ref("channels", channel, "messages", "control")],
            },
        )

    def _arguments(
        self, func: Callable[..., Any], qualname: str, parameters: list[inspect.Parameter]
    ) -> dict[str, Any]:
        """The seed's request envelope `{"args": [...], "kwargs": {...}}` of `func`."""
        positional: list[dict[str, Any]] = []
        rest: dict[str, Any] | None = None
        named: dict[str, Any] = {}
        extra: dict[str, Any] | bool = False
        required: list[str] = []
        for parameter in parameters:
            annotation = annotation_of(func, parameter.name)
            kind = parameter.kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                rest = self.schemas.add(annotation)
                continue
            if kind is inspect.Parameter.VAR_KEYWORD:
                extra = self.schemas.add(annotation)
                continue
            if parameter.default is inspect.Parameter.empty:
                required.append(f"`{parameter.name}`")
            if kind is not inspect.Parameter.KEYWORD_ONLY:
                positional.append(self.schemas.add(annotation))
            if kind is not inspect.Parameter.POSITIONAL_ONLY:
                named[parameter.name] = self.schemas.add(annotation)
        args: dict[str, Any] = {"type": "array"}
        if positional:
            args["items"] = positional
            args["additionalItems"] = rest if rest is not None else False
        elif rest is not None:
            args["items"] = rest
        else:
            args["maxItems"] = 0
        kwargs: dict[str, Any] = {"type": "object", "properties": named}
        kwargs["additionalProperties"] = extra
        description = (
            f"The arguments of {qualname}: positional ones in `args`, named ones in "
            "`kwargs`, each decoded into its parameter's annotation."
        )
        if required:
            description += f" Required, by position or by name: {', '.join(required)}."
        return {
            "type": "object",
            "description": description,
            "properties": {"args": args, "kwargs": kwargs},
        }

    # -- SSE -----------------------------------------------------------------------------

    def _sse(
        self,
        notes: _ServiceNotes,
        attr: str,
        func: Callable[..., Any],
        spec: HttpStreamSpec,
        settings: ServiceSettings,
        parameters: list[inspect.Parameter],
    ) -> None:
        service = notes.name
        notes.add("listens to Server-Sent Events in", attr)
        endpoint = spec.endpoint or settings.endpoint
        address: str | None = None
        if endpoint:
            parts = urllib.parse.urlsplit(endpoint)
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            if parts.port is not None:
                host = f"{host}:{parts.port}"
            # No user info, query or fragment: they may hold credentials.
            address = parts.path or "/"
            where = f"`{parts.scheme}://{host}{address}`"
            server = {
                "host": host,
                "protocol": parts.scheme,
                "description": "A Server-Sent-Events stream that the service listens to.",
            }
            name = self._server((parts.scheme, host), "sse", server)
        else:
            # Known only where the service runs: a server whose host is a variable.
            where = f"the `endpoint` setting of [{service}]"
            server = {
                "host": "{endpoint}",
                "protocol": "http",
                "description": f"The SSE stream at the `endpoint` setting of [{service}] "
                "(http or https), not set where this document was written.",
                "variables": {"endpoint": {"description": "Host and port of the endpoint."}},
            }
            name = self._server(("endpoint", service), "sse", server)
        servers = {"servers": [_ref("servers", name)]}
        data = annotation_of(func, parameters[0].name) if parameters else Any
        payload = self.schemas.add(data, open_when_any=True)
        if data is Any:
            payload["description"] = (
                "No annotation: a JSON value as the matching builtin (an object as a "
                "dict); data that is not JSON as the raw string."
            )
        kinds = (
            ", ".join(f"`{kind}`" for kind in sorted(spec.event_types))
            if spec.event_types is not None
            else "every type"
        )
        channel = self._channel(
            f"{service}.{attr}",
            {
                "address": address,
                "title": f"{service}.{attr} events",
                "description": f"Server-Sent Events from {where}; events of {kinds}. The "
                "listener reconnects after the server's `retry:`, sending `Last-Event-ID`.",
                **servers,
                "messages": {
                    "event": {
                        "name": f"{service}.{attr}.event",
                        "summary": "The `data` of one event.",
                        "contentType": JSON,
                        "payload": payload,
                    }
                },
            },
        )
        self._operation(
            notes,
            f"{service}.{attr}",
            {
                "action": "receive",
                "channel": _ref("channels", channel),
                "messages": [_ref("channels", channel, "messages", "event")],
            },
            func,
        )

    # -- the document --------------------------------------------------------------------

    def _message(self, name: str, body: Any, *, open_when_any: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"name": name}
        type_name = getattr(body, "__name__", None)
        if isinstance(body, type) and type_name:
            message["title"] = type_name
        message["contentType"] = JSON
        message["payload"] = self.schemas.add(body, open_when_any=open_when_any)
        return message

    def _link_publishers(self) -> None:
        """Give a publisher the typed body of the consumers it reaches in this document.

        A publisher's body is untyped (`publish(body)` takes any object), but when every
        routing key it publishes with reaches consumers of one typed body (a direct
        exchange and the same routing key, or a fanout exchange), that body is the
        contract: the message says so and carries its schema.
        """
        for exchange, kind, keys, published in self._published:
            reached = [self._readers(exchange, kind, key) for key in keys]
            if not all(reached):
                continue  # some messages reach no typed consumer described here
            messages = [message for found in reached for message in found]
            payload = messages[0]["payload"]
            if all(message["payload"] == payload for message in messages):
                published["payload"] = payload
                names = dict.fromkeys(f"`{message['name']}`" for message in messages)
                published["description"] = f"The body that {', '.join(names)} decode(s)."

    def _readers(self, exchange: str, kind: str, key: str) -> list[dict[str, Any]]:
        """The messages of the typed consumers that a publish to `exchange` with `key` reaches."""
        return [
            message
            for name, consumed_kind, bound, message in self._consumed
            if name == exchange
            and consumed_kind == kind
            and (kind == "fanout" or (kind == "direct" and key in bound))
        ]

    def document(self, modules: Sequence[str], title: str, version: str) -> Any:
        error_info = self.schemas.add(ErrorInfo) if self.uses_rpc else {}
        self.schemas.build()
        self._link_publishers()
        info: dict[str, Any] = {
            "title": title,
            "version": version,
            "description": self._description(modules),
        }
        tags = [
            {"name": notes.name, **_doc_field("description", notes.cls)} for notes in self.notes
        ]
        if tags:
            info["tags"] = tags
        document: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "defaultContentType": JSON,
        }
        if self.servers:
            document["servers"] = self.servers
        document["channels"] = self.channels
        document["operations"] = self.operations
        components: dict[str, Any] = {}
        if self.uses_rpc:
            components["messages"] = _rpc_messages(error_info)
        if self.schemas.components:
            components["schemas"] = self.schemas.components
        if components:
            document["components"] = components
        return msgspec.to_builtins(document)

    def _description(self, modules: Sequence[str]) -> str:
        shown = ", ".join(f"`{module}`" for module in modules)
        lines = [f"The services of {shown}, as farine runs them.", ""]
        if not self.notes:
            lines.append("No service found.")
        for notes in self.notes:
            what = "; ".join(f"{role} {', '.join(names)}" for role, names in notes.roles.items())
            what = what or "no entrypoint described here"
            where = f"{notes.cls.__module__}.{notes.cls.__qualname__}"
            lines.append(f"- **{notes.name}** (`{where}`): {what}.")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Amqp:
    """A service's broker, as its channels show it."""

    servers: list[dict[str, str]]
    vhost: str | None
    settings: ServiceSettings

    def servers_field(self) -> dict[str, Any]:
        return {"servers": list(self.servers)} if self.servers else {}

    def vhosted(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.vhost is not None:
            spec["vhost"] = self.vhost
        return spec


def _item_schema(value: dict[str, Any], end: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"body": value, "__end__": {"type": "boolean", "description": end}},
        "required": ["body", "__end__"],
    }


def _rpc_messages(error_info: dict[str, Any]) -> dict[str, Any]:
    return {
        "rpcEnd": {
            "name": "rpc.end",
            "title": "End of the replies",
            "summary": "Nothing follows: the stream (or the result) is complete.",
            "contentType": JSON,
            "correlationId": dict(_CORRELATION_ID),
            "payload": {
                "type": "object",
                "properties": {"__end__": {"const": True}},
                "required": ["__end__"],
                "not": {"required": ["body"]},
            },
        },
        "rpcError": {
            "name": "rpc.error",
            "title": "Error reply",
            "summary": "The method raised (or the call's arguments did not fit it).",
            "description": "`__except__` is baguette-messaging's field: the traceback when "
            "the service's `rpc_send_traceback` setting is on, else `Type: message`. "
            "`error` is farine's typed envelope. Nothing follows an error.",
            "contentType": JSON,
            "headers": dict(_REPLY_HEADERS),
            "correlationId": dict(_CORRELATION_ID),
            "payload": {
                "type": "object",
                "properties": {
                    "__except__": {"type": "string"},
                    "error": error_info,
                },
                "required": ["__except__"],
            },
        },
    }


def _doc_field(key: str, obj: object) -> dict[str, str]:
    line = _first_line(inspect.getdoc(obj))
    return {key: line} if line else {}


def _module_version(modules: Sequence[str]) -> str:
    for module in modules:
        version = getattr(sys.modules.get(module), "__version__", None)
        if isinstance(version, str) and version:
            return version
    return "0.0.0"


def _pick(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def _call_parameters(cls: type, attr: str, func: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters a call of method `attr` fills: its own, without `self`."""
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # no signature (a builtin): nothing to describe
        return []
    if isinstance(inspect.getattr_static(cls, attr), staticmethod | classmethod):
        return parameters  # no `self`; a class method comes bound to its class
    return parameters[1:]


def _publishers(cls: type) -> list[tuple[str, PublishSpec | Publisher | AsyncPublisher]]:
    """The publishers a class declares: `@publish` methods and publisher attributes."""
    found: dict[str, tuple[PublishSpec | Publisher | AsyncPublisher, ...]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            item: object = value
            if isinstance(value, staticmethod | classmethod):
                item = cast(object, value.__func__)  # pyright: ignore[reportUnknownMemberType]
            if isinstance(item, Publisher | AsyncPublisher):
                found[attr] = (item,)
            else:
                specs = publish_specs(item)
                if specs:
                    found[attr] = specs
                elif attr in found:  # overridden by something that does not publish
                    del found[attr]
    return [(attr, target) for attr, targets in found.items() for target in targets]


def build_document(
    modules: str | Sequence[str],
    *,
    config: Config | None = None,
    title: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Describe every service of `modules` as one AsyncAPI 3.0.0 document.

    Services are found as `farine start` finds them (`<module>.service`). The document
    is a JSON-compatible dict: channels and operations for consumers, publishers, RPC
    methods (request and reply) and SSE listeners, with message payloads' JSON Schemas
    from the handlers' annotations (an unannotated body is an open object).

    Args:
        modules: The module, or several (one document for all).
        config: The configuration that gives each service's settings (broker, flags,
            SSE endpoint). Default: the current one (`farine.settings`).
        title: The document's title (default: the module names).
        version: The API's version (default: the module's `__version__`, else 0.0.0).

    Returns:
        The document.

    Raises:
        ServiceNotFound: A module (or its `service` submodule) does not exist.
        ConfigurationError: Two services have the same name, or a handler's
            annotation cannot be resolved.

    Example:
        ```python
        from farine.asyncapi import build_document

        document = build_document("pingpong")
        ```
    """
    names = [modules] if isinstance(modules, str) else list(modules)
    services: list[ServiceDefinition] = []
    for module in names:
        found = discover(module)
        if not found:
            logger.warning("module %r defines no service (no class with entrypoints)", module)
        services.extend(found)
    return describe_services(
        services,
        config=config,
        title=title or ", ".join(names),
        version=version or _module_version(names),
        modules=names,
    )


def describe_services(
    services: Sequence[ServiceDefinition],
    *,
    config: Config | None = None,
    title: str,
    version: str,
    modules: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Describe `services` (found by `farine.discovery`) as one AsyncAPI document.

    See `build_document()`, which finds the services of `modules` and calls this.
    """
    seen: dict[str, ServiceDefinition] = {}
    for service in services:
        other = seen.setdefault(service.name, service)
        if other is not service:
            raise ConfigurationError(
                f"two services are named {service.name!r} ({other.module}.service."
                f"{other.cls.__qualname__} and {service.module}.service."
                f"{service.cls.__qualname__}): describe their modules one at a time"
            )
    builder = _Builder(config if config is not None else farine_settings.current())
    for service in services:
        builder.add_service(service)
    if modules is None:
        modules = list(dict.fromkeys(service.module for service in services))
    return cast(dict[str, Any], builder.document(modules, title, version))
