"""The RPC server: `@farine.rpc.method()` and the entrypoint that answers calls.

Each method consumes its own queue `<service>__<method>`, bound to the direct exchange
`<service>` with the routing key `<service>__<method>` (so seed clients reach it). For
each request it decodes the arguments into the method's annotations, calls the method,
publishes the reply (or the items of a generator, then the end marker) to `reply_to`,
and only then acks the request: a server that dies mid-call leaves the request in the
queue for another instance.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from farine import _telemetry as telemetry
from farine import _tracing
from farine._broker import (
    Binding,
    ExchangeSpec,
    QueueSpec,
    Topology,
    is_direct_reply_to,
)
from farine._broker.errors import PublishError, UnroutableError
from farine._broker.interface import Outgoing
from farine._broker.loops import now
from farine._broker.message import Properties
from farine._connections import get_connection
from farine._deadlines import Deadlines
from farine._limits import CallLimits, check_max_concurrency, check_timeout
from farine._takers import Takers
from farine.entrypoints import (
    Entrypoint,
    EntrypointSpec,
    ServiceContext,
    handler_transaction,
    record_spec,
)
from farine.exceptions import ConfigurationError
from farine.rpc._context import serving
from farine.rpc._errors import register_error
from farine.rpc._protocol import (
    END,
    HEADER_CONTROL,
    HEADER_DEADLINE,
    HEADER_UNARY,
    HEADER_WINDOW,
    ArgumentBinder,
    BadArguments,
    Control,
    encode_error,
    encode_item,
    presence_key,
    routing_key,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from anyio.abc import TaskStatus

    from farine._broker import Connection, Consumer
    from farine._broker.message import Message

__all__ = ("MethodSpec", "method")

logger = logging.getLogger("farine.rpc")

F = TypeVar("F", bound=Callable[..., Any])

CONTENT_TYPE = "application/json"

_STOP = object()
#: No value to send: the method streamed its replies (`_RpcMethod._run` returns it), or
#: was cancelled.
_NO_VALUE = object()


_control_decoder = msgspec.json.Decoder(Control)


@dataclass(frozen=True, slots=True)
class MethodSpec(EntrypointSpec):
    """Spec of `farine.rpc.method()`."""

    prefetch: int | None = None
    expected: tuple[type[BaseException], ...] = ()
    transaction: bool | None = None
    timeout: float | None = None
    max_concurrency: int | None = None
    shutdown_timeout: float | None = None
    #: The errors of the method's contract, re-raised as themselves by callers.
    errors: tuple[type[BaseException], ...] = ()
    kind = "rpc"

    def bind(self, service: ServiceContext, handler: Callable[..., Any], name: str) -> Entrypoint:
        return _RpcMethod(service, handler, name, self)


def method(
    *,
    prefetch: int | None = None,
    expected: tuple[type[BaseException], ...] = (),
    transaction: bool | None = None,
    timeout: float | None = None,
    max_concurrency: int | None = None,
    shutdown_timeout: float | None = None,
    errors: tuple[type[BaseException], ...] = (),
) -> Callable[[F], F]:
    """Serve the decorated method over RPC, as `<service>.<method>`.

    The method takes the call's arguments (`(self, *args, **kwargs)` in baguette-messaging's
    style, or named, annotated parameters: each argument is decoded into its parameter's
    annotation with msgspec). It may be `def` (run in a worker thread) or `async def`,
    and may return a value, or be a generator or an async generator to stream items.
    Return values and items are encoded with msgspec (Structs, dataclasses, datetimes,
    UUIDs...).

    An exception raised by the method is sent to the caller. One of the `errors` it
    declares is re-raised by the caller as itself, rebuilt from its `args`; any other
    reaches the caller as a `farine.rpc.RemoteError` with its type and a one-line
    message (and the traceback only when the `rpc_send_traceback` setting is on). It is
    logged as an error, unless its type is listed in `expected` or `errors` (logged at
    INFO).

    The request is acknowledged only after the reply is published, so a call being
    handled by a server that dies is redelivered to another one.

    Args:
        prefetch: Calls handled at once by this method (default: the `prefetch` setting).
        expected: Exception types that are part of the method's contract, logged at INFO.
        errors: Exception types that are part of the method's contract, sent with their
            `args` so that callers re-raise them as themselves (they are registered
            with `farine.rpc.register_error`, for callers in this process).
        transaction: With a database, run each call of a `def` method in a transaction
            (each `db_run` of an `async def` one; each step of a generator), committed
            or rolled back before the reply is sent. Default: the `transaction` setting.
        timeout: Seconds a call (a stream: all of it) may run (default: the
            `handler_timeout` setting; `math.inf`: no limit). Past it, an `async def`
            method is cancelled and a `def` one abandoned in its thread, and the caller
            gets an `RPCError` for a `HandlerTimeout`. The caller's own deadline still
            applies: the earlier one wins.
        max_concurrency: Calls handled at once, below `prefetch` (default: the
            `max_concurrency` setting, else `prefetch`).
        shutdown_timeout: Seconds this method's calls in flight get to finish once the
            service stops (default: the `shutdown_timeout` setting).

    Example:
        ```python
        import farine.rpc

        class Server:
            @farine.rpc.method()
            def dummy(self, *args, **kwargs):
                return True
        ```
    """
    if prefetch is not None and prefetch < 1:
        raise ConfigurationError("prefetch must be >= 1")
    for error in errors:
        register_error(error)
    check_timeout("timeout", timeout)
    check_timeout("shutdown_timeout", shutdown_timeout, zero=True)
    check_max_concurrency(max_concurrency)
    spec = MethodSpec(
        prefetch=prefetch,
        expected=tuple(expected),
        transaction=transaction,
        timeout=timeout,
        max_concurrency=max_concurrency,
        shutdown_timeout=shutdown_timeout,
        errors=tuple(errors),
    )

    def decorate(func: F) -> F:
        return record_spec(func, spec)

    return decorate


def _remaining(message: Message) -> float | None:
    """Seconds left before the caller's deadline (None: no deadline)."""
    raw = message.headers.get(HEADER_DEADLINE)
    if raw is None:
        return None
    try:
        return float(raw) - time.time()
    except (TypeError, ValueError):
        return None


class _RpcMethod(Entrypoint):
    def __init__(
        self, service: ServiceContext, handler: Callable[..., Any], name: str, spec: MethodSpec
    ) -> None:
        super().__init__(service, handler, name)
        settings = service.settings
        self.spec = spec
        self.binder = ArgumentBinder(handler, f"{service.name}.{name}", settings.body_max_depth)
        self.routing_key = routing_key(service.name, name)
        self.queue = self.routing_key
        self.prefetch = spec.prefetch or settings.prefetch
        self._consumer: Consumer | None = None
        self.limits = CallLimits.resolve(
            self.qualname, settings, timeout=spec.timeout, max_concurrency=spec.max_concurrency
        )
        self.limits.check_consumer_timeout(settings, self.queue)
        self._limited_run = self.limits.applied_to(self._run)
        self.is_async_gen = inspect.isasyncgenfunction(handler)
        self.is_gen = inspect.isgeneratorfunction(handler)
        # Cancels and credits of streams this instance serves arrive on a queue of its own.
        self.control_queue = f"{self.queue}.control.{uuid.uuid4().hex[:12]}"
        self._streams: dict[str, anyio.CancelScope] = {}
        self._flows: dict[str, _Flow] = {}
        # The scopes of the calls running, cancelled once their caller's deadline passed.
        self._deadlines = Deadlines[anyio.CancelScope](_cancel)
        exchange = ExchangeSpec(
            # Never auto-deleted, whatever `auto_delete` says: as baguette-messaging 0.19.
            service.name,
            "direct",
            durable=settings.durable,
            auto_delete=False,
        )
        self.topology = (
            Topology(
                exchanges=(exchange,),
                queues=(QueueSpec(self.queue, durable=settings.durable, auto_delete=False),),
                bindings=(Binding(self.queue, service.name, self.routing_key),),
            )
            if settings.auto_declare
            else Topology()
        )
        self.control_topology = Topology(
            queues=(
                QueueSpec(self.control_queue, durable=False, auto_delete=True, exclusive=True),
            ),
            # Tells callers of a missing method that the service itself runs.
            bindings=(Binding(self.control_queue, service.name, presence_key(service.name)),),
        )

    def describe(self) -> str:
        kind = "stream" if self.is_gen or self.is_async_gen else "call"
        return (
            f"{self.qualname} (rpc {kind}: queue {self.queue!r} <- exchange "
            f"{self.service.name!r}, prefetch {self.prefetch}{self.limits.describe()})"
        )

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        connection = await get_connection(self.service.settings)
        consumer = await connection.consume(
            self.queue, prefetch=self.prefetch, topology=self.topology
        )
        control = await connection.consume(
            self.control_queue, prefetch=64, topology=self.control_topology
        )
        self._consumer = consumer
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._cancel_on_stop, consumer)
                tg.start_soon(self._read_control, control)
                tg.start_soon(self._deadlines.run)
                task_status.started()
                # Tasks take calls one after the other: starting a task per call costs
                # about as much as the rest of a short call.
                await Takers(
                    consumer,
                    functools.partial(self._handle, connection=connection),
                    limit=self.limits.tasks(self.prefetch),
                    # A transaction, if any, ends inside each call, before its reply.
                    scope=functools.partial(handler_transaction, self.spec.transaction),
                ).run()
                tg.cancel_scope.cancel()  # calls are done: no more cancels nor deadlines
        finally:
            # Shielded: closing returns unacked requests to the queue, even when the
            # service is being cancelled after its shutdown timeout.
            self._consumer = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                await consumer.aclose()
                await control.aclose()

    async def not_ready(self) -> str | None:
        consumer = self._consumer
        if consumer is None:
            return f"not consuming from queue {self.queue!r}"
        return await consumer.not_ready()

    async def _cancel_on_stop(self, consumer: Consumer) -> None:
        await self.service.stopping.wait()
        logger.info("%s: no longer taking calls", self.qualname)
        await consumer.cancel()

    async def _read_control(self, control: Consumer) -> None:
        async for message in control:
            message.ack()
            try:
                order = _control_decoder.decode(message.body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                logger.warning("%s: ignoring a malformed control message", self.qualname)
                continue
            if order.credit is not None:
                flow = self._flows.get(order.credit)
                if flow is not None:
                    flow.grant(order.read)
            if order.cancel is not None:
                scope = self._streams.get(order.cancel)
                if scope is not None:
                    logger.info("%s: caller stopped stream %s", self.qualname, order.cancel)
                    scope.cancel()

    # -- one call ---------------------------------------------------------------------

    def _handle(self, message: Message, connection: Connection) -> Awaitable[None]:
        """Answer one call: awaiting it does (traced or labelled when telemetry is on)."""
        if not telemetry.on():
            return self._answer(message, connection)
        return self._answer_observed(message, connection)

    async def _answer_observed(self, message: Message, connection: Connection) -> None:
        call = _tracing.rpc_server_call(
            self.qualname, self.service.name, self.name, message.correlation_id, message.headers
        )
        with telemetry.handling(call):
            await self._answer(message, connection)

    async def _answer(self, message: Message, connection: Connection) -> None:
        if self.service.stopping.is_set():
            message.nack(requeue=True)  # delivered while stopping: let another instance answer
            return
        remaining = _remaining(message)
        if remaining is not None and remaining <= 0:
            logger.info(
                "%s: dropping call %s: its deadline passed %.3fs ago",
                self.qualname, message.correlation_id, -remaining,
            )  # fmt: skip
            message.ack()
            return
        reply = _Replier(self, message, connection)
        try:
            args, kwargs = self.binder.bind(message.body)
        except BadArguments as exc:
            logger.info("%s: rejected call %s: %s", self.qualname, message.correlation_id, exc)
            await reply.error(exc)
            message.ack()
            return
        scope = anyio.CancelScope()
        deadline = math.inf if remaining is None else now() + remaining
        if remaining is not None:
            self._deadlines.add(scope, deadline)
        correlation_id = message.correlation_id
        if correlation_id is not None:
            self._streams[correlation_id] = scope
            if reply.flow is not None:
                self._flows[correlation_id] = reply.flow
        result: Any = _NO_VALUE
        metrics = self.service.metrics
        start = 0.0 if metrics is None else time.perf_counter()
        outcome = "ok"
        try:
            with scope, serving(self.service.name, self.name, message):
                # The method's own time limit nests in the caller's deadline.
                result = await self._limited_run(reply, args, kwargs)
            if result is not _NO_VALUE:
                # Sent outside the call's scope: neither its deadline nor its caller can
                # cut the publish short, without shielding it.
                await reply.value(result)
        except Exception as exc:
            _tracing.record_failure(exc)
            if isinstance(exc, self.spec.expected + self.spec.errors):
                logger.info("%s raised %s: %s", self.qualname, type(exc).__name__, exc)
            else:
                logger.exception("%s raised", self.qualname)
            outcome = "error"
            await reply.error(exc)
        finally:
            self._deadlines.discard(scope)
            if correlation_id is not None:
                self._streams.pop(correlation_id, None)
                self._flows.pop(correlation_id, None)
        if scope.cancelled_caught:
            past = now() >= deadline
            reason = "its deadline passed" if past else "its caller stopped it"
            logger.info("%s: call %s cancelled: %s", self.qualname, correlation_id, reason)
            outcome = "timeout" if past else "cancelled"
        if metrics is not None:
            metrics.rpc_served(self.name, outcome, time.perf_counter() - start)
        if not message.settled:
            message.ack()

    async def _run(self, reply: _Replier, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the method; return its value, or stream what it yields (`_NO_VALUE`)."""
        service = self.service
        if self.is_async_gen:
            with service.activate(), service.observing(self.handler, args, kwargs):
                await reply.stream_async(self.handler(*args, **kwargs))
            return _NO_VALUE
        result = await service.call(self.handler, *args, **kwargs)
        if inspect.isgenerator(result):
            with service.observing(self.handler, args, kwargs):
                await reply.stream_sync(result)
            return _NO_VALUE
        if inspect.isasyncgen(result):
            with service.activate(), service.observing(self.handler, args, kwargs):
                await reply.stream_async(result)
            return _NO_VALUE
        return result


def _cancel(scope: anyio.CancelScope) -> None:
    scope.cancel()


class _Flow:
    """The pace of a stream whose caller announced a window (header `x-farine-window`).

    The server sends at most `read + window` items, `read` being what the caller said it
    has read (its credit messages): a slow reader holds the generator back instead of
    letting items pile up in its buffer.
    """

    __slots__ = ("_room", "read", "sent", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.read = 0
        self.sent = 0
        self._room: anyio.Event | None = None

    def grant(self, read: int) -> None:
        if read > self.read:
            self.read = read
            if self._room is not None:
                self._room.set()

    async def wait_for_room(self, replier: _Replier) -> None:
        """Return once another item may be sent (at once, unless the caller is behind)."""
        while self.sent >= self.read + self.window:
            logger.debug(
                "%s: stream %s waits for its caller (%d items unread)",
                replier.method.qualname, replier.correlation_id, self.sent - self.read,
            )  # fmt: skip
            self._room = anyio.Event()
            try:
                await self._room.wait()
            finally:
                self._room = None


def _window(message: Message) -> int | None:
    """The window a stream's caller announced, if it did (and it makes sense)."""
    window = message.headers.get(HEADER_WINDOW)
    if isinstance(window, int) and not isinstance(window, bool) and window > 0:
        return window
    return None


class _Replier:
    """Publishes the replies of one call to its `reply_to`."""

    def __init__(self, method: _RpcMethod, message: Message, connection: Connection) -> None:
        self.method = method
        self.reply_to = message.reply_to
        self.correlation_id = message.correlation_id
        self.unary = HEADER_UNARY in message.headers
        # RabbitMQ reports a mandatory reply to a direct reply-to address as unroutable
        # even when it delivers it: only a reply queue can tell that its caller is gone.
        self.mandatory = self.reply_to is not None and not is_direct_reply_to(self.reply_to)
        self.connection = connection
        self.gone = False
        # Only a stream can be stopped by its caller: a unary call's reply needs no
        # control queue (and is cheaper to encode and decode without headers).
        self._first = not self.unary
        window = None if self.unary or self.reply_to is None else _window(message)
        self.flow = None if window is None else _Flow(window)

    async def _send(self, body: bytes, *, shield: bool = True) -> None:
        if self.reply_to is None or self.gone:
            return  # a call with nowhere to reply (fire-and-forget), or a caller gone
        headers: dict[str, Any] | None = None
        if self._first:
            self._first = False
            headers = {HEADER_CONTROL: self.method.control_queue}
        properties = Properties(
            content_type=CONTENT_TYPE,
            correlation_id=self.correlation_id,
            delivery_mode=1,  # a reply is worthless once its caller is gone
            headers=headers,
        )
        publish = self.connection.publish(
            Outgoing("", self.reply_to, body, properties, mandatory=self.mandatory)
        )
        try:
            if shield:
                # A reply published from inside the call's scope is finished even if
                # the call is being cancelled, so the caller never sees half of a
                # message sequence.
                with anyio.CancelScope(shield=True):
                    await publish
            else:
                await publish
        except UnroutableError:
            # The caller's reply queue is gone: it will not read what follows either.
            self.gone = True
            logger.info(
                "%s: caller of %s is gone; stopping", self.method.qualname, self.correlation_id
            )
            raise _CallerGone from None

    async def value(self, result: Any) -> None:
        """Send the value of a call (from outside its scope: no shield is needed)."""
        try:
            if self.unary:
                await self._send(encode_item(result, end=True), shield=False)
            else:
                await self._send(encode_item(result), shield=False)
                await self._send(END, shield=False)
        except _CallerGone:
            pass

    async def error(self, exc: BaseException) -> None:
        settings = self.method.service.settings
        data = getattr(exc, "rpc_data", None)
        declared = isinstance(exc, self.method.spec.errors)
        try:
            await self._send(
                encode_error(
                    exc, send_traceback=settings.rpc_send_traceback, data=data, declared=declared
                )
            )
        except (_CallerGone, PublishError):
            logger.warning(
                "%s: could not send the error of call %s",
                self.method.qualname, self.correlation_id, exc_info=True,
            )  # fmt: skip

    async def _send_first(self, item: Any) -> None:
        """Send a generator's first item as the value of a unary call (the caller reads no
        more); the generator is then closed."""
        await self._send(encode_item(item, end=True))

    async def _send_item(self, item: Any) -> None:
        await self._send(encode_item(item))
        if self.flow is not None:
            self.flow.sent += 1

    async def stream_async(self, items: AsyncIterator[Any]) -> None:
        flow = self.flow
        try:
            while True:
                if flow is not None:
                    await flow.wait_for_room(self)
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    break
                if self.unary:
                    await self._send_first(item)
                    return
                await self._send_item(item)
            await self._send(END)
        except _CallerGone:
            pass
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def stream_sync(self, items: Iterator[Any]) -> None:
        service = self.method.service
        flow = self.flow
        try:
            while True:
                if flow is not None:
                    await flow.wait_for_room(self)
                item = await service.run_sync(next, items, _STOP)
                if item is _STOP:
                    break
                if self.unary:
                    await self._send_first(item)
                    return
                await self._send_item(item)
            await self._send(END)
        except _CallerGone:
            pass
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                # Runs the generator's `finally` blocks in a worker thread, as its body ran.
                with anyio.CancelScope(shield=True):
                    try:
                        await service.run_sync(close)
                    except ValueError:
                        # "generator already executing": a `next()` abandoned at the
                        # deadline still runs in its thread; the generator ends with it.
                        logger.debug("%s: generator still running", self.method.qualname)


class _CallerGone(Exception):
    """The caller's reply queue no longer exists."""
