"""The RPC client: `Client` (blocking, or `async with`), `AsyncClient`, and `@client`.

Every call of a process to one broker goes through one reply channel (RabbitMQ's direct
reply-to, `amq.rabbitmq.reply-to`; the memory broker has it too): requests are
published on it and their replies come back on it, handed to each call by correlation
id, so any number of calls are in flight at once. Each call has a deadline (the
`rpc_timeout` setting, per client or per call); the request carries it (AMQP
`expiration` and a deadline header), so a server drops a request already expired and
cancels a handler still running when it passes.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Concatenate, Final, ParamSpec, TypeVar

import anyio
import anyio.from_thread
import msgspec

from farine import settings as farine_settings
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
from farine._broker.message import Message, Properties
from farine._deadlines import Deadlines
from farine._inject import injector
from farine._loop import Wakeup, now
from farine.amqp._connection import get_connection
from farine.entrypoints import current_service
from farine.exceptions import ConfigurationError, RPCError
from farine.rpc._protocol import (
    HEADER_CONTROL,
    HEADER_DEADLINE,
    HEADER_UNARY,
    HEADER_WINDOW,
    Control,
    decode_reply,
    encode_request,
    error_from_reply,
    routing_key,
)
from farine.runtime import current_runtime

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
    from concurrent.futures import Future

    from anyio.abc import TaskGroup, TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from farine._broker import Connection, Consumer, ReplyChannel
    from farine.settings import ServiceSettings

__all__ = ("AsyncClient", "Client", "client", "use_script_backend")

logger = logging.getLogger("farine.rpc")

_control_encoder = msgspec.json.Encoder()

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")

CONTENT_TYPE: Final = "application/json"
#: Seconds a stream's cancel or credit may wait to be sent.
CONTROL_TIMEOUT: Final = 5.0


class _Call:
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


class _UnaryCall:
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


class _Router:
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
        self.calls: dict[str, _Call | _UnaryCall] = {}
        self.channel: ReplyChannel | None = None
        self._declared: set[str] = set()
        # Correlation ids only need to be unique among this channel's calls.
        self._prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        # Unary calls in flight, ended (they raise their timeout) once their deadline
        # passed.
        self._deadlines = Deadlines[_UnaryCall](_UnaryCall.expire)
        self.closed = False
        # Reply queues for baguette-messaging servers, by service (see the docstring).
        self._reply_queues: dict[str, str] = {}
        self._reply_queues_lock = anyio.Lock()
        self._tasks: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[_Router]) -> None:
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
    ) -> Message:
        """Publish the request of a unary call and return its first reply.

        Raises:
            RPCError: No server, the request could not be sent, or the reply channel was
                lost before the reply arrived.
        """
        correlation_id = f"{self._prefix}.{next(self._ids)}"
        call = _UnaryCall(correlation_id)
        self.calls[correlation_id] = call
        self._deadlines.add(call, now() + limit)
        try:
            await self._publish(correlation_id, settings, service, method, args, kwargs, limit)
            await call.arrived.wait()
        finally:
            del self.calls[correlation_id]
            self._deadlines.discard(call)
        if call.message is None:
            if call.expired:
                raise _timeout(f"{service}.{method}", limit)
            raise _closed(f"{service}.{method}") if call.closed else _lost(f"{service}.{method}")
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
    ) -> AsyncGenerator[_Call]:
        """Publish the request of a stream and yield the call whose replies arrive on
        `call.receive`."""
        correlation_id = f"{self._prefix}.{next(self._ids)}"
        call = _Call(correlation_id, settings.rpc_stream_window)
        self.calls[correlation_id] = call
        try:
            await self._publish(
                correlation_id, settings, service, method, args, kwargs, limit, stream=call
            )
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
        stream: _Call | None = None,
    ) -> None:
        assert self.channel is not None, "the router is not running"
        body = encode_request(args, kwargs)
        reply_to = DIRECT_REPLY_TO
        if service in settings.rpc_legacy_servers:
            with anyio.move_on_after(limit):
                reply_to = await self._reply_to(service, settings)
            if reply_to == DIRECT_REPLY_TO:
                raise _timeout(f"{service}.{method}", limit)
        headers: dict[str, Any] = {HEADER_DEADLINE: f"{time.time() + limit:.6f}"}
        if stream is None:
            headers[HEADER_UNARY] = 1
        else:
            headers[HEADER_WINDOW] = stream.window
        properties = Properties(
            content_type=CONTENT_TYPE,
            correlation_id=correlation_id,
            reply_to=reply_to,
            expiration=str(max(1, math.ceil(limit * 1000))),
            headers=headers,
            delivery_mode=settings.delivery_mode,
            message_id=correlation_id,
        )
        key = routing_key(service, method)
        try:
            await self.channel.publish(
                service,
                key,
                body,
                properties,
                mandatory=True,
                timeout=limit,
                declare=self._exchange(service, settings),
            )
        except PublishTimeout:
            raise _timeout(f"{service}.{method}", limit) from None
        except UnroutableError:
            raise RPCError(
                f"{service}.{method}: no server (no queue is bound to exchange {service!r} "
                f"with routing key {key!r})"
            ) from None
        except PublishError as exc:
            if self.closed:
                raise _closed(f"{service}.{method}") from None
            raise RPCError(f"{service}.{method}: the request could not be sent: {exc}") from None

    def _exchange(self, service: str, settings: ServiceSettings) -> ExchangeSpec | None:
        if not settings.auto_declare or service in self._declared:
            return None
        self._declared.add(service)
        # Declared by the caller too, so a call to a service that never started fails as
        # unroutable (fast) instead of closing the channel on a missing exchange.
        return ExchangeSpec(service, "direct", durable=settings.durable)

    async def cancel(self, call: _Call) -> None:
        """Ask the server streaming to `call` to stop (best effort)."""
        # Shielded (the caller may be leaving because it was cancelled), so bounded.
        with anyio.CancelScope(shield=True), anyio.move_on_after(CONTROL_TIMEOUT + 1):
            await self._control(call, Control(cancel=call.correlation_id))

    async def credit(self, call: _Call, read: int) -> bool:
        """Tell the server streaming to `call` that its reader has read `read` items.

        Returns False when the server named no control queue (yet) to send it to.
        """
        return await self._control(call, Control(credit=call.correlation_id, read=read))

    async def _control(self, call: _Call, order: Control) -> bool:
        if call.control is None:
            return False  # no first reply yet, or a baguette-messaging server
        body = _control_encoder.encode(order)
        try:
            # Bounded: with the connection down, the stream itself is lost anyway.
            await self.connection.publish(
                "", call.control, body, Properties(content_type=CONTENT_TYPE),
                mandatory=False, timeout=CONTROL_TIMEOUT,
            )  # fmt: skip
        except PublishError:
            logger.debug("could not send %r to %s", order, call.correlation_id, exc_info=True)
        return True


@contextlib.asynccontextmanager
async def _open_router(connection: Connection) -> AsyncGenerator[_Router]:
    async with anyio.create_task_group() as tg:
        router = await tg.start(_Router(connection).run)
        try:
            yield router
        finally:
            tg.cancel_scope.cancel()


def _settings_for(service: str) -> ServiceSettings:
    """The caller's settings when called from a service, else the target's section."""
    ctx = current_service()
    return ctx.settings if ctx is not None else farine_settings.get(service)


async def _router_in_runtime(settings: ServiceSettings) -> _Router | None:
    runtime = current_runtime()
    if runtime is None or not runtime.owns_current_loop():
        return None
    connection = await get_connection(settings)
    return await runtime.resource(
        "rpc-router:" + settings.amqp_uri, lambda: _open_router(connection)
    )


class _ClientBase:
    """What both clients share: the target, its settings, and `rpc.<method>(...)`."""

    def __init__(
        self, service: str, timeout: float | None, settings: ServiceSettings | None
    ) -> None:
        self.service = service
        self.settings = settings if settings is not None else _settings_for(service)
        self.timeout = timeout if timeout is not None else self.settings.rpc_timeout
        if settings is None and current_runtime() is None:
            # A script opens its own connection: the call's deadline covers connecting
            # too, so an unreachable broker is not retried for longer than that.
            connect_for = min(self.settings.connect_retry_timeout, self.timeout)
            self.settings = dataclasses.replace(self.settings, connect_retry_timeout=connect_for)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} service={self.service!r} timeout={self.timeout}>"

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)
        return functools.partial(self.call, method)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call `method` (see the subclasses for what is returned)."""
        raise NotImplementedError

    def _options(self, kwargs: dict[str, Any]) -> tuple[bool, float]:
        """Pop the call options (`__stream__`, `__timeout__`) out of a call's kwargs."""
        stream = bool(kwargs.pop("__stream__", False))
        timeout = kwargs.pop("__timeout__", None)
        return stream, self.timeout if timeout is None else float(timeout)


class AsyncClient(_ClientBase):
    """Call the methods of `service` from async code: `await rpc.method(*args, **kwargs)`.

    `rpc.method(..., __stream__=True)` returns an async iterator of the items the method
    streams. `__timeout__=seconds` overrides the deadline of one call.

    Inside a service, `@farine.rpc.client` injects one into `async def` methods. From
    other async code use `async with farine.rpc.Client(service) as rpc:`.

    Args:
        service: The service to call.
        timeout: Deadline of each call in seconds (default: the `rpc_timeout` setting).
    """

    def __init__(
        self,
        service: str,
        timeout: float | None = None,
        *,
        router: _Router | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        super().__init__(service, timeout, settings)
        self._router = router

    async def _get_router(self) -> _Router:
        if self._router is None:
            self._router = await _router_in_runtime(self.settings)
        if self._router is None:
            raise RPCError(
                "outside a running farine service, use `async with farine.rpc.Client(...)` "
                "(or the blocking client)"
            )
        return self._router

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call `method`; awaitable, or an async iterator with `__stream__=True`."""
        stream, limit = self._options(kwargs)
        if stream:
            return self._stream(method, args, kwargs, limit)
        return self._call(method, args, kwargs, limit)

    async def _call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit: float
    ) -> Any:
        router = self._router if self._router is not None else await self._get_router()
        message = await router.call(self.settings, self.service, method, args, kwargs, limit)
        reply = decode_reply(message.body)
        if reply.except_:
            raise error_from_reply(reply, f"{self.service}.{method}")
        return reply.body

    async def _stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit: float
    ) -> AsyncGenerator[Any]:
        router = await self._get_router()
        where = f"{self.service}.{method}"
        deadline = now() + limit
        ended = False
        async with router.open_stream(
            self.settings, self.service, method, args, kwargs, limit
        ) as call:
            # Credit goes to the server each time the reader has taken half a window.
            read = credited = 0
            step = max(1, call.window // 2)
            try:
                while True:
                    message: Message | None = None
                    with anyio.move_on_after(deadline - now()):
                        message = await _receive(call, where)
                    if message is None:
                        raise RPCError(f"{where}: timeout: stream not finished within {limit:g}s")
                    reply = decode_reply(message.body)
                    if reply.except_:
                        ended = True
                        raise error_from_reply(reply, where)
                    if reply.has_body:
                        read += 1
                        if read - credited >= step and await router.credit(call, read):
                            credited = read
                        yield reply.body
                    if reply.end:
                        ended = True
                        return
            finally:
                if not ended:
                    await router.cancel(call)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def _receive(call: _Call, where: str) -> Message:
    try:
        return await call.receive.receive()
    except anyio.EndOfStream:
        if call.lost:
            raise (_closed(where) if call.closed else _lost(where)) from None
        if call.overflowed:
            raise RPCError(
                f"{where}: stream reader too slow: more than {call.window} items buffered "
                "(the server does not wait for its reader)"
            ) from None
        raise RPCError(f"{where}: the reply stream ended unexpectedly") from None


def _timeout(where: str, limit: float) -> RPCError:
    return RPCError(f"{where}: timeout: no reply within {limit:g}s")


def _closed(where: str) -> RPCError:
    return RPCError(
        f"{where}: the RPC client was closed before the reply arrived "
        "(the call may or may not have run)"
    )


def _lost(where: str) -> RPCError:
    return RPCError(
        f"{where}: the connection to the broker was lost before the reply arrived "
        "(the call may or may not have run)"
    )


# -- blocking use -------------------------------------------------------------------------


class _ScriptLoop:
    """An event loop in a thread, for blocking calls made outside any runtime (scripts)."""

    _lock = threading.Lock()
    _instance: _ScriptLoop | None = None
    #: The anyio backend of its loop ("asyncio" or "trio"): `use_script_backend()`.
    backend = "asyncio"

    def __init__(self) -> None:
        self._cm = anyio.from_thread.start_blocking_portal(self.backend, name="farine-rpc")
        self.portal = self._cm.__enter__()
        self.routers: dict[str, _Router] = {}
        self._tasks: list[Future[None]] = []
        self._router_lock = threading.Lock()

    @classmethod
    def get(cls) -> _ScriptLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
                # Stopped before the interpreter finalises: a portal left open until then
                # is garbage-collected while its (daemon) thread can no longer run, and
                # the process hangs at exit.
                atexit.register(cls.close)
            return cls._instance

    def router(self, settings: ServiceSettings) -> _Router:
        with self._router_lock:
            router = self.routers.get(settings.amqp_uri)
            if router is None:
                connection = self.portal.call(get_connection, settings)
                # Exit handlers run last-registered first: stop the reply queues before
                # the transport's handler closes the connection under them.
                atexit.unregister(_ScriptLoop.close)
                atexit.register(_ScriptLoop.close)
                # A task of its own in the loop's thread: it reads the replies until closed.
                task, router = self.portal.start_task(_Router(connection).run)
                self._tasks.append(task)
                self.routers[settings.amqp_uri] = router
            return router

    @classmethod
    def close(cls) -> None:
        """Stop the script loop and its reply queues (tests; interpreter exit)."""
        with cls._lock:
            instance, cls._instance = cls._instance, None
        if instance is not None:
            for task in instance._tasks:
                task.cancel()
            instance._cm.__exit__(None, None, None)


def use_script_backend(backend: str) -> None:
    """Run blocking calls made outside any runtime (scripts) on `backend`'s event loop.

    `backend` is "asyncio" (the default) or "trio". It applies to the loop that the next
    blocking call starts, so call it before the first one (`farine call --backend`).
    """
    _ScriptLoop.backend = backend


def _run_blocking(settings: ServiceSettings, fn: Callable[[_Router], Awaitable[R]]) -> R:
    """Run `fn(router)` on the right event loop from blocking code and return its result."""
    runtime = current_runtime()
    # Blocking code on the runtime's loop thread itself cannot wait for that loop (it
    # would deadlock): like a script, it uses a loop of its own.
    if runtime is not None and runtime.token is not None and not runtime.owns_current_loop():

        async def in_runtime() -> R:
            router = await _router_in_runtime(settings)
            assert router is not None
            return await fn(router)

        return anyio.from_thread.run(in_runtime, token=runtime.token)
    loop = _ScriptLoop.get()
    try:
        router = loop.router(settings)
    except BrokerUnavailable as exc:
        raise RPCError(f"timeout: cannot reach the broker: {exc}") from None
    return loop.portal.call(fn, router)


class Client(_ClientBase):
    """Call the methods of `service`: blocking, or `async with Client(...) as rpc`.

    Blocking (in `def` methods, where `@farine.rpc.client` injects one, and in plain
    scripts)::

        result = farine.rpc.Client("calc").add(1, 2)
        for item in farine.rpc.Client("calc").count(3, __stream__=True):
            ...

    Async (outside a service; inside one, `@farine.rpc.client` injects an `AsyncClient`)::

        async with farine.rpc.Client("calc") as rpc:
            result = await rpc.add(1, 2)

    Args:
        service: The service to call.
        timeout: Deadline of each call in seconds (default: the `rpc_timeout` setting).
            `__timeout__=seconds` overrides it for one call.

    Raises:
        RPCError: From a call: the remote method raised (`remote_type`,
            `remote_message`, `remote_traceback`), no server serves the method, or the
            deadline passed (the message then contains "timeout").
    """

    def __init__(self, service: str, timeout: float | None = None) -> None:
        super().__init__(service, timeout, None)
        self._exit: contextlib.AsyncExitStack | None = None

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call `method` and block for its result; a generator with `__stream__=True`."""
        stream, limit = self._options(kwargs)
        if stream:
            return self._stream(method, args, kwargs, limit)

        async def run(router: _Router) -> Any:
            rpc = AsyncClient(self.service, limit, router=router, settings=self.settings)
            return await rpc.call(method, *args, **kwargs)

        return _run_blocking(self.settings, run)

    def _stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
    ) -> Generator[Any]:
        items: list[AsyncGenerator[Any]] = []

        async def start(router: _Router) -> None:
            rpc = AsyncClient(self.service, timeout, router=router, settings=self.settings)
            items.append(rpc.call(method, *args, __stream__=True, __timeout__=timeout, **kwargs))

        async def step(_: _Router) -> tuple[bool, Any]:
            try:
                return True, await items[0].__anext__()
            except StopAsyncIteration:
                return False, None

        async def close(_: _Router) -> None:
            await items[0].aclose()

        _run_blocking(self.settings, start)
        finished = False
        try:
            while True:
                more, item = _run_blocking(self.settings, step)
                if not more:
                    finished = True
                    return
                yield item
        finally:
            if not finished:
                # Left early (break, exception): the server stops iterating too.
                _run_blocking(self.settings, close)

    async def __aenter__(self) -> AsyncClient:
        router = await _router_in_runtime(self.settings)
        if router is None:
            self._exit = contextlib.AsyncExitStack()
            try:
                connection = await get_connection(self.settings)
            except BrokerUnavailable as exc:
                raise RPCError(f"timeout: cannot reach the broker: {exc}") from None
            router = await self._exit.enter_async_context(_open_router(connection))
        return AsyncClient(self.service, self.timeout, router=router, settings=self.settings)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._exit is not None:
            exit_stack, self._exit = self._exit, None
            await exit_stack.aclose()


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
        lambda _self: Client(service, timeout), lambda _self: AsyncClient(service, timeout)
    )
