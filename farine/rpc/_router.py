"""The reply channel of a connection, and the RPC calls waiting on it.

Every call of a process to one broker goes through one reply channel (RabbitMQ's direct
reply-to, `amq.rabbitmq.reply-to`; the memory broker has it too): requests are
published on it and their replies come back on it, handed to each call by correlation
id, so any number of calls are in flight at once. Each call has a deadline; the request
carries it (AMQP `expiration` and a deadline header), so a server drops a request
already expired and cancels a handler still running when it passes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from farine._broker import (
    DIRECT_REPLY_TO,
    Binding,
    ExchangeSpec,
    QueueSpec,
    Topology,
)
from farine._broker.errors import (
    BrokerUnavailable,
    PublishError,
    PublishTimeout,
    UnroutableError,
)
from farine._broker.interface import Outgoing
from farine._broker.loops import Wakeup, now
from farine._broker.message import Message, Properties
from farine._connections import get_connection
from farine._deadlines import Deadlines
from farine.exceptions import (
    ConfigurationError,
    MethodNotFound,
    RPCError,
    RPCTimeout,
    ServiceUnavailable,
    UnknownService,
)
from farine.rpc._protocol import (
    HEADER_CONTEXT,
    HEADER_CONTROL,
    HEADER_DEADLINE,
    HEADER_UNARY,
    HEADER_WINDOW,
    Control,
    encode_request,
    presence_key,
    routing_key,
)
from farine.runtime import current_runtime

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping

    from anyio.abc import TaskGroup, TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from farine._broker import Connection, Consumer, ReplyChannel
    from farine.settings import ServiceSettings

__all__ = (
    "CONTROL_TIMEOUT",
    "Router",
    "StreamCall",
    "UnaryCall",
    "closed_error",
    "lost_error",
    "open_router",
    "router_in_runtime",
    "timeout_error",
    "unavailable_error",
)

logger = logging.getLogger("farine.rpc")

_control_encoder = msgspec.json.Encoder()

CONTENT_TYPE: Final = "application/json"
#: The longest routing key AMQP carries, in bytes.
MAX_ROUTING_KEY: Final = 255
#: Seconds a stream's cancel or credit may wait to be sent.
CONTROL_TIMEOUT: Final = 5.0


class StreamCall:
    """A streaming call in flight: where its replies go, and the stream's control queue.

    Its buffer holds `window` items and the end (or error) reply: a farine server sends
    no more than that ahead of the reader (it waits for the reader's credit).
    """

    __slots__ = (
        "closed", "control", "correlation_id", "lost", "overflowed", "receive", "send", "window",
    )  # fmt: skip

    def __init__(self, correlation_id: str, window: int) -> None:
        self.correlation_id = correlation_id
        self.window = window
        self.send: MemoryObjectSendStream[Message]
        self.receive: MemoryObjectReceiveStream[Message]
        self.send, self.receive = anyio.create_memory_object_stream[Message](window + 1)
        self.control: str | None = None
        self.overflowed = False
        self.lost = False
        self.closed = False

    def deliver(self, message: Message) -> None:
        try:
            self.send.send_nowait(message)
        except anyio.WouldBlock:
            # Only from a server that does not wait for its reader (a baguette-messaging
            # one): end the stream (it raises) rather than block the replies of every
            # other call behind it.
            self.overflowed = True
            self.send.close()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the caller already left

    def fail_lost(self, *, closed: bool = False) -> None:
        """End the call: its replies can no longer arrive (the reply channel was lost, or
        the client `closed`)."""
        self.lost = True
        self.closed = closed
        self.send.close()

    async def next_reply(self, where: str) -> Message:
        """Wait for the call's next reply.

        Args:
            where: `service.method`, for error messages.

        Raises:
            RPCError: The replies can no longer arrive (client closed, connection lost),
                the reader fell more than a window behind, or the stream ended early.
        """
        try:
            return await self.receive.receive()
        except anyio.EndOfStream:
            if self.lost:
                raise (closed_error(where) if self.closed else lost_error(where)) from None
            if self.overflowed:
                raise RPCError(
                    f"{where}: stream reader too slow: more than {self.window} items buffered "
                    "(the server does not wait for its reader)"
                ) from None
            raise RPCError(f"{where}: the reply stream ended unexpectedly") from None


class UnaryCall:
    """A call waiting for one value: its first reply is all it reads.

    Its deadline is kept by the router's `Deadlines`: one task for every call, instead
    of a cancel scope and a timer per call.
    """

    __slots__ = ("arrived", "closed", "control", "correlation_id", "expired", "message")

    def __init__(self, correlation_id: str) -> None:
        self.correlation_id = correlation_id
        self.arrived = Wakeup()
        self.message: Message | None = None
        self.control: str | None = None
        self.expired = False
        self.closed = False

    def deliver(self, message: Message) -> None:
        # A seed server sends the end marker apart from the value: it is not needed.
        if self.message is None and not self.arrived.is_set():
            self.message = message
            self.arrived.set()

    def fail_lost(self, *, closed: bool = False) -> None:
        self.closed = closed
        self.arrived.set()

    def expire(self) -> None:
        if not self.arrived.is_set():
            self.expired = True
            self.arrived.set()


class Router:
    """The reply channel of one connection, and the calls waiting on it.

    Requests are published on a reply channel (RabbitMQ's direct reply-to): replies
    come back on it without a reply queue or acks, and the transport hands them to
    `_on_replies` on this loop, which gives each to its call by correlation id.

    A baguette-messaging server publishes its replies to its service's exchange (with
    the caller's `reply_to` as routing key), where direct reply-to cannot receive them:
    calls to such a service (the `rpc_legacy_servers` setting) name a reply queue of
    this router bound to that exchange instead, one per service, declared on first use.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.calls: dict[str, StreamCall | UnaryCall] = {}
        self.channel: ReplyChannel | None = None
        self._declared: set[str] = set()
        # Correlation ids only need to be unique among this channel's calls.
        self._prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        # Unary calls in flight, ended (they raise their timeout) once their deadline
        # passed.
        self._deadlines = Deadlines[UnaryCall](UnaryCall.expire)
        self.closed = False
        # Reply queues for baguette-messaging servers, by service (see the docstring).
        self._reply_queues: dict[str, str] = {}
        self._reply_queues_lock = anyio.Lock()
        self._tasks: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[Router]) -> None:
        self.channel = await self.connection.open_reply_channel(self._on_replies, self._on_lost)
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                task_status.started(self)
                await self._deadlines.run()
        finally:
            # The deadlines are no longer kept: calls still waiting end now.
            self.closed = True
            for call in list(self.calls.values()):
                call.fail_lost(closed=True)
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.channel.aclose()

    def _on_replies(self, messages: list[Message]) -> None:
        calls = self.calls
        for message in messages:
            call = calls.get(message.correlation_id or "")
            if call is None:
                logger.debug("dropping a reply to a finished call %s", message.correlation_id)
                continue
            if call.control is None:
                headers = message.properties.headers
                control = headers.get(HEADER_CONTROL) if headers else None
                if isinstance(control, str | bytes):
                    call.control = control.decode() if isinstance(control, bytes) else control
            call.deliver(message)

    def _on_lost(self) -> None:
        for call in list(self.calls.values()):
            call.fail_lost()

    async def _reply_to(self, service: str, settings: ServiceSettings) -> str:
        """The reply queue of calls to baguette-messaging server `service`."""
        queue = self._reply_queues.get(service)
        if queue is not None:
            return queue
        async with self._reply_queues_lock:
            queue = self._reply_queues.get(service)
            if queue is None:
                queue = await self._open_reply_queue(service, settings)
                self._reply_queues[service] = queue
        return queue

    async def _open_reply_queue(self, service: str, settings: ServiceSettings) -> str:
        assert self._tasks is not None, "the router is not running"
        queue = f"farine-rpc-replies-{self._prefix}-{service}"
        exchanges = (ExchangeSpec(service, "direct", durable=settings.durable),)
        topology = Topology(
            exchanges=exchanges if settings.auto_declare else (),
            queues=(QueueSpec(queue, durable=False, auto_delete=True, exclusive=True),),
            # The seed's server publishes to its exchange, routing key `reply_to`; a
            # farine server publishes to the default exchange: both reach the queue.
            bindings=(Binding(queue, service, queue),),
        )
        try:
            consumer = await self.connection.consume(queue, prefetch=256, topology=topology)
        except (BrokerUnavailable, ConfigurationError, PublishError) as exc:
            raise RPCError(f"{service}: cannot open a reply queue: {exc}") from None
        logger.info("replies of calls to %s (baguette-messaging) come through %s", service, queue)
        self._tasks.start_soon(self._read_replies, consumer)
        return queue

    async def _read_replies(self, consumer: Consumer) -> None:
        try:
            async for message in consumer:
                message.ack()
                self._on_replies([message])
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await consumer.aclose()

    # -- one call -----------------------------------------------------------------------

    async def call(
        self,
        settings: ServiceSettings,
        service: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        limit: float,
        headers: Mapping[str, str] | None = None,
        trace: Mapping[str, Any] | None = None,
    ) -> Message:
        """Publish the request of a unary call and return its first reply.

        Raises:
            RPCTimeout: No reply within `limit` seconds.
            UnknownService: Nothing serves `service`.
            MethodNotFound: `service` runs, but has no method `method`.
            ServiceUnavailable: No connection to the broker within `limit` seconds.
            RPCError: The request could not be sent, or the reply channel was lost
                before the reply arrived.
        """
        correlation_id = f"{self._prefix}.{next(self._ids)}"
        call = UnaryCall(correlation_id)
        self.calls[correlation_id] = call
        self._deadlines.add(call, now() + limit)
        try:
            await self._publish(
                correlation_id, settings, service, method, args, kwargs, limit,
                headers=headers, trace=trace,
            )  # fmt: skip
            await call.arrived.wait()
        finally:
            del self.calls[correlation_id]
            self._deadlines.discard(call)
        if call.message is None:
            where = f"{service}.{method}"
            if call.expired:
                raise timeout_error(where, limit)
            raise closed_error(where) if call.closed else lost_error(where)
        return call.message

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        settings: ServiceSettings,
        service: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        limit: float,
        headers: Mapping[str, str] | None = None,
        trace: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[StreamCall]:
        """Publish the request of a stream and yield the call whose replies arrive on
        `call.receive`."""
        correlation_id = f"{self._prefix}.{next(self._ids)}"
        call = StreamCall(correlation_id, settings.rpc_stream_window)
        self.calls[correlation_id] = call
        try:
            await self._publish(
                correlation_id, settings, service, method, args, kwargs, limit,
                stream=call, headers=headers, trace=trace,
            )  # fmt: skip
            yield call
        finally:
            del self.calls[correlation_id]
            call.send.close()
            call.receive.close()

    async def _publish(
        self,
        correlation_id: str,
        settings: ServiceSettings,
        service: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        limit: float,
        *,
        stream: StreamCall | None = None,
        headers: Mapping[str, str] | None = None,
        trace: Mapping[str, Any] | None = None,
    ) -> None:
        assert self.channel is not None, "the router is not running"
        where = f"{service}.{method}"
        key = routing_key(service, method)
        if len(key.encode()) > MAX_ROUTING_KEY:
            raise MethodNotFound(f"{where[:80]}...: no method has so long a name")
        body = encode_request(args, kwargs)
        reply_to = DIRECT_REPLY_TO
        if service in settings.rpc_legacy_servers:
            with anyio.move_on_after(limit):
                reply_to = await self._reply_to(service, settings)
            if reply_to == DIRECT_REPLY_TO:
                raise timeout_error(f"{service}.{method}", limit)
        table: dict[str, Any] = {HEADER_DEADLINE: f"{time.time() + limit:.6f}"}
        if stream is None:
            table[HEADER_UNARY] = 1
        else:
            table[HEADER_WINDOW] = stream.window
        if headers:
            table[HEADER_CONTEXT] = dict(headers)
        if trace:
            table.update(trace)  # the caller's span (`traceparent`...), for the server's
        properties = Properties(
            content_type=CONTENT_TYPE,
            correlation_id=correlation_id,
            reply_to=reply_to,
            expiration=str(max(1, math.ceil(limit * 1000))),
            headers=table,
            delivery_mode=settings.delivery_mode,
            message_id=correlation_id,
        )
        try:
            await self.channel.publish(
                Outgoing(
                    service,
                    key,
                    body,
                    properties,
                    mandatory=True,
                    timeout=limit,
                    declare=self._exchange(service, settings),
                )
            )
        except PublishTimeout:
            if not self.connection.connected:
                raise unavailable_error(where, limit) from None
            raise timeout_error(where, limit) from None
        except UnroutableError:
            pass
        except PublishError as exc:
            if self.closed:
                raise closed_error(where) from None
            raise RPCError(f"{where}: the request could not be sent: {exc}") from None
        else:
            return
        raise await self._not_found(service, method, settings, limit)

    async def _not_found(
        self, service: str, method: str, settings: ServiceSettings, limit: float
    ) -> RPCError:
        """The error of a request returned unroutable: is anything serving `service`?"""
        assert self.channel is not None, "the router is not running"
        where = f"{service}.{method}"
        key = routing_key(service, method)
        missing = MethodNotFound(
            f"{where}: no such method: service {service!r} runs, but no queue is bound to "
            f"its exchange with routing key {key!r} (only decorated methods can be called)"
        )
        if service in settings.rpc_legacy_servers:
            return missing  # a baguette-messaging server: it does not answer the probe
        # Every running farine server of the service binds a queue with this key: the
        # probe (an empty control message, which servers ignore) is routed iff one runs.
        probe = Outgoing(
            service,
            presence_key(service),
            b"{}",
            Properties(content_type=CONTENT_TYPE, expiration="5000"),
            mandatory=True,
            timeout=limit,
        )
        try:
            await self.channel.publish(probe)
        except UnroutableError:
            return UnknownService(
                f"{where}: unknown service: nothing serves {service!r} (no queue is bound "
                f"to exchange {service!r} with routing key {key!r})"
            )
        except PublishError as exc:
            return RPCError(f"{where}: no queue is bound for the method ({exc})")
        return missing

    def _exchange(self, service: str, settings: ServiceSettings) -> ExchangeSpec | None:
        if not settings.auto_declare or service in self._declared:
            return None
        self._declared.add(service)
        # Declared by the caller too, so a call to a service that never started fails as
        # unroutable (fast) instead of closing the channel on a missing exchange.
        return ExchangeSpec(service, "direct", durable=settings.durable)

    async def cancel(self, call: StreamCall) -> None:
        """Ask the server streaming to `call` to stop (best effort)."""
        # Shielded (the caller may be leaving because it was cancelled), so bounded.
        with anyio.CancelScope(shield=True), anyio.move_on_after(CONTROL_TIMEOUT + 1):
            await self._control(call, Control(cancel=call.correlation_id))

    async def credit(self, call: StreamCall, read: int) -> bool:
        """Tell the server streaming to `call` that its reader has read `read` items.

        Returns False when the server named no control queue (yet) to send it to.
        """
        return await self._control(call, Control(credit=call.correlation_id, read=read))

    async def _control(self, call: StreamCall, order: Control) -> bool:
        if call.control is None:
            return False  # no first reply yet, or a baguette-messaging server
        body = _control_encoder.encode(order)
        try:
            # Bounded: with the connection down, the stream itself is lost anyway.
            await self.connection.publish(
                Outgoing(
                    "", call.control, body, Properties(content_type=CONTENT_TYPE),
                    mandatory=False, timeout=CONTROL_TIMEOUT,
                )
            )  # fmt: skip
        except PublishError:
            logger.debug("could not send %r to %s", order, call.correlation_id, exc_info=True)
        return True


@contextlib.asynccontextmanager
async def open_router(connection: Connection) -> AsyncGenerator[Router]:
    """Run a router on `connection` for the duration of the block.

    Example:
        ```python
        async with open_router(connection) as router:
            reply = await router.call(settings, "calc", "add", (1, 2), {}, 5.0)
        ```
    """
    async with anyio.create_task_group() as tg:
        router = await tg.start(Router(connection).run)
        try:
            yield router
        finally:
            tg.cancel_scope.cancel()


async def router_in_runtime(settings: ServiceSettings) -> Router | None:
    """Return the runtime's router for `settings.amqp_uri`, or None outside its loop.

    One router per broker URI is shared by every service of a runtime, opened on first
    use and closed when the runtime stops.
    """
    runtime = current_runtime()
    if runtime is None or not runtime.owns_current_loop():
        return None
    connection = await get_connection(settings)
    return await runtime.resource(
        "rpc-router:" + settings.amqp_uri, lambda: open_router(connection)
    )


def timeout_error(where: str, limit: float) -> RPCTimeout:
    """The error of a call whose deadline passed."""
    return RPCTimeout(f"{where}: timeout: no reply within {limit:g}s")


def unavailable_error(where: str, limit: float) -> ServiceUnavailable:
    """The error of a call that found no connection to the broker before its deadline."""
    return ServiceUnavailable(f"{where}: timeout: no connection to the broker within {limit:g}s")


def closed_error(where: str) -> RPCError:
    """The error of a call whose client closed before its reply arrived."""
    return RPCError(
        f"{where}: the RPC client was closed before the reply arrived "
        "(the call may or may not have run)"
    )


def lost_error(where: str) -> RPCError:
    """The error of a call whose reply channel was lost before its reply arrived."""
    return RPCError(
        f"{where}: the connection to the broker was lost before the reply arrived "
        "(the call may or may not have run)"
    )
