"""The SSE entrypoint: `farine.stream.http()` and the listener that runs it.

httpx-sse parses the stream but neither reconnects nor sends `Last-Event-ID`, so the
listener owns that loop: connect, dispatch each event to the handler, and when the
connection ends or fails, wait (the server's `retry:`, backing off when failures repeat)
and connect again from the last event ID it saw.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import httpx
import httpx_sse

from farine import _telemetry as telemetry
from farine import _tracing
from farine._limits import CallLimits, check_timeout
from farine._retry import Retry, RetryPolicy
from farine.codec import BadBody, BodyDecoder, annotation_of
from farine.entrypoints import (
    Entrypoint,
    EntrypointSpec,
    ServiceContext,
    handler_transaction,
    record_spec,
)
from farine.exceptions import ConfigurationError

from ._event import Event
from ._retry import reconnect_delay

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ("HttpStreamSpec", "http")

logger = logging.getLogger("farine.stream")

F = TypeVar("F", bound=Callable[..., Any])

#: Longest wait (seconds) a `Retry-After` header may impose on a 429/503 answer.
MAX_RETRY_AFTER: Final = 600.0

#: Longest time (seconds) spent closing a stream left in the middle.
ABANDON_TIMEOUT: Final = 1.0

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True, slots=True)
class HttpStreamSpec(EntrypointSpec):
    """Spec of `farine.stream.http()`.

    Attributes:
        endpoint: URL of the stream; `None` means the service's `endpoint` setting.
        headers: Extra request headers from the decorator, as `(name, value)` pairs.
        event_types: Event types delivered to the handler; `None` means all.
        limit: Stop after this many events; `None` means never.
        timeout: Stop after this many seconds; `None` means never.
        transaction: Run each handler call in a database transaction; `None` means
            the service's `transaction` setting.
        handler_timeout: Seconds one handler call may run; `None` means the service's
            `handler_timeout` setting.
        shutdown_timeout: Seconds a handler call in flight gets to finish once the
            service stops; `None` means the service's `shutdown_timeout` setting.
        retry: How a failed handler call is retried, in place; `None`: not retried.
    """

    endpoint: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    event_types: frozenset[str] | None = None
    limit: int | None = None
    timeout: float | None = None
    transaction: bool | None = None
    handler_timeout: float | None = None
    shutdown_timeout: float | None = None
    retry: Retry | None = None
    kind = "sse"

    def bind(self, service: ServiceContext, handler: Callable[..., Any], name: str) -> Entrypoint:
        settings = service.settings
        endpoint = self.endpoint or settings.endpoint
        if not endpoint:
            raise ConfigurationError(
                "no SSE endpoint: pass farine.stream.http(endpoint=...) or set `endpoint` "
                f"in the [{service.name}] section of {settings.source}"
            )
        url = _check_url(endpoint)
        # Settings come last so that an operator can override the code's headers
        # (credentials usually live in the configuration file, not in the code).
        headers = httpx.Headers(dict(self.headers))
        for key, value in settings.headers.items():
            headers[str(key)] = str(value)  # header names are case-insensitive here too
        data_name, wants_event = _inspect_handler(handler)
        decode = _Decode(
            annotation_of(handler, data_name),
            where=f"{service.name}.{name}",
            max_size=settings.max_body_size,
            max_depth=settings.body_max_depth,
        )
        return _HttpStream(
            service,
            handler,
            name,
            spec=self,
            url=url,
            headers=headers,
            decode=decode,
            wants_event=wants_event,
        )


def http(
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    event_types: Iterable[str] | None = None,
    limit: int | None = None,
    timeout: float | None = None,
    transaction: bool | None = None,
    *,
    handler_timeout: float | None = None,
    shutdown_timeout: float | None = None,
    retry: Retry | None = None,
) -> Callable[[F], F]:
    """Call the decorated method for each event of an HTTP Server-Sent-Events stream.

    The method takes the event's `data`, decoded from JSON into the annotation of its
    first parameter (a `msgspec.Struct`, a dataclass, `list[int]`, ...). Without an
    annotation a JSON value arrives as the matching builtin (an object as a `dict`) and
    data that is not JSON as the raw string; annotated `str`, the raw string always.
    Data that does not decode into the annotation is logged with the reason and skipped.
    An optional second parameter receives the whole `farine.stream.Event`. The method
    may be `def` (run in a worker thread) or `async def`; an exception it raises is
    logged and the stream goes on.

    The listener reconnects on its own, after the server's `retry:` (default: the
    `sse_retry` setting), sending `Last-Event-ID`, and backs off when failures repeat.
    An HTTP 204 answer stops it for good.

    Args:
        endpoint: URL of the stream. Default: the service's `endpoint` setting.
        headers: Extra request headers. The service's `headers` setting is added to (and
            overrides) them; keep credentials there. Headers are never logged.
        event_types: Deliver only events of these types (`"message"` is the type of an
            event with no `event:` field). Default: every event.
        limit: Stop listening after this many events (for scripts and tests).
        timeout: Stop listening after this many seconds (for scripts and tests).
        transaction: With a database, run each call of a `def` method in a transaction
            (each `db_run` of an `async def` one): committed when it returns, rolled
            back when it raises. Default: the service's `transaction` setting.
        handler_timeout: Seconds one handler call may run (default: the
            `handler_timeout` setting; `math.inf`: no limit). Past it, an `async def`
            handler is cancelled and a `def` one abandoned in its thread; the call fails
            with `HandlerTimeout`, logged, and the stream goes on. (`timeout` is the
            seed's: how long the listener runs.)
        shutdown_timeout: Seconds a handler call in flight gets to finish once the
            service stops (default: the `shutdown_timeout` setting).
        retry: Retry a failed call (`farine.amqp.Retry`): no broker redelivers an
            event, so the listener waits the backoff and calls the method again with
            the same event, before reading the next one; a stop ends the waiting.
            Default: a failed call is logged and the stream goes on.

    Raises:
        ConfigurationError: An argument is invalid.

    Example:
        ```python
        import farine.stream

        class Client:
            @farine.stream.http()
            def listen_event(self, data):
                return True
        ```
    """
    if endpoint is not None:
        _check_url(endpoint)
    if limit is not None and limit < 1:
        raise ConfigurationError(f"limit must be >= 1, got {limit!r}")
    if timeout is not None and not timeout > 0:
        raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")
    check_timeout("handler_timeout", handler_timeout)
    check_timeout("shutdown_timeout", shutdown_timeout, zero=True)
    if isinstance(event_types, str):
        # A lone string is one type, not a set of one-letter types.
        event_types = (event_types,)
    spec = HttpStreamSpec(
        endpoint=endpoint,
        headers=tuple((str(k), str(v)) for k, v in (headers or {}).items()),
        event_types=frozenset(event_types) if event_types is not None else None,
        limit=limit,
        timeout=timeout,
        transaction=transaction,
        handler_timeout=handler_timeout,
        shutdown_timeout=shutdown_timeout,
        retry=retry,
    )

    def decorate(func: F) -> F:
        return record_spec(func, spec)

    return decorate


def _check_url(endpoint: str) -> httpx.URL:
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"invalid SSE endpoint {_shown(endpoint)!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"invalid SSE endpoint {_shown(endpoint)!r}: expected an http:// or https:// URL"
        )
    return url


def _shown(endpoint: str | httpx.URL) -> str:
    """The endpoint as logged: no user info, query or fragment (they may hold tokens)."""
    try:
        url = httpx.URL(endpoint)
        return str(url.copy_with(username=None, password=None, query=None, fragment=None))
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"


def _inspect_handler(handler: Callable[..., Any]) -> tuple[str, bool]:
    """Return the name of the data parameter and whether the handler takes the event."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # some builtins and C callables
        return "data", False
    params = signature.parameters.values()
    positional = [p for p in params if p.kind in _POSITIONAL]
    if not positional and any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return "data", False  # `def h(self, *args)`: gets the data only
    if not positional:
        raise ConfigurationError("an SSE handler takes the event data: `def h(self, data)`")
    required = [p for p in positional[2:] if p.default is inspect.Parameter.empty]
    required += [
        p
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if required:
        names = ", ".join(p.name for p in required)
        raise ConfigurationError(
            f"an SSE handler takes (data) or (data, event); {names} would get no value"
        )
    return positional[0].name, len(positional) >= 2


class _Decode:
    """Turn an event's data text into the handler's argument."""

    __slots__ = ("_decoder", "_mode", "max_size")

    def __init__(self, annotation: Any, *, where: str, max_size: int, max_depth: int) -> None:
        self.max_size = max_size
        if annotation is Any:
            self._mode = (
                "auto"  # JSON when it parses, else the raw string (baguette-messaging's way)
            )
        elif annotation is str:
            self._mode = "raw"  # SSE data is text: `data: str` asks for it as is
        else:
            self._mode = "typed"
        self._decoder = BodyDecoder(annotation, where=where, max_size=max_size, max_depth=max_depth)

    def __call__(self, text: str) -> Any:
        body = text.encode()
        if len(body) > self.max_size:
            raise BadBody(f"data of {len(body)} bytes exceeds max_body_size ({self.max_size})")
        if self._mode == "raw":
            return text
        if self._mode == "auto":
            try:
                return self._decoder.decode(body)
            except BadBody:
                return text
        return self._decoder.decode(body)


class _Outcome(enum.Enum):
    ENDED = "the server ended the stream"
    LOST = "connection lost or failed"
    SERVER_ERROR = "server error"
    CLIENT_ERROR = "client error"
    NO_CONTENT = "204 No Content"
    FINISHED = "finished"


class _HttpStream(Entrypoint):
    def __init__(
        self,
        service: ServiceContext,
        handler: Callable[..., Any],
        name: str,
        *,
        spec: HttpStreamSpec,
        url: httpx.URL,
        headers: httpx.Headers,
        decode: _Decode,
        wants_event: bool,
    ) -> None:
        super().__init__(service, handler, name)
        self.spec = spec
        self._limited_call = CallLimits.resolve(
            self.qualname, service.settings, timeout=spec.handler_timeout
        ).applied_to(service.call)
        self.url = url
        self._url = str(url)
        self.shown_url = _shown(url)
        self._headers = headers
        self._decode = decode
        self._wants_event = wants_event
        # Kept across connections (and restarts of serve()): they are the stream's state.
        self._retry = service.settings.sse_retry
        self._last_event_id = ""
        self._events = 0
        self._busy = False
        self._stop_requested = False
        self._retry_after: float | None = None
        self._opened = False
        self._policy = RetryPolicy(spec.retry) if spec.retry is not None else None

    def describe(self) -> str:
        return f"{self.qualname} (sse, {self.shown_url})"

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        # Ready at once: the first connection is made in the background, so an endpoint
        # that is down delays nothing else; the listener keeps trying and logs each step.
        self._stop_requested = False
        timeout = httpx.Timeout(None, connect=self.service.settings.connect_timeout)
        async with (
            httpx.AsyncClient(
                timeout=timeout, follow_redirects=True, transport=self.service.http_transport
            ) as client,
            anyio.create_task_group() as tg,
        ):
            listening = anyio.CancelScope()
            tg.start_soon(self._stop_when_asked, listening)
            task_status.started()
            with listening:
                await self._listen(client)
            tg.cancel_scope.cancel()
        logger.info("%s: stopped listening to %s", self.qualname, self.shown_url)

    async def _stop_when_asked(self, listening: anyio.CancelScope) -> None:
        with anyio.move_on_after(self.spec.timeout):
            await self.service.stopping.wait()
        if not self.service.stopping.is_set():
            logger.info("%s: timeout of %gs reached", self.qualname, self.spec.timeout)
        self._stop_requested = True
        # Waiting for the next event (or to reconnect) is cancelled at once, so an idle
        # stream cannot delay a shutdown; a handler call in flight is left to finish and
        # the loop ends after it.
        if not self._busy:
            listening.cancel()

    async def _listen(self, client: httpx.AsyncClient) -> None:
        failures = 0
        while True:
            outcome = await self._connect_once(client)
            if outcome is _Outcome.FINISHED or self._stop_requested:
                return
            if outcome is _Outcome.NO_CONTENT:
                logger.info(
                    "%s: %s answered 204 No Content: not reconnecting",
                    self.qualname,
                    self.shown_url,
                )
                return
            # A connection that opened resets the backoff: losing it is a first failure,
            # retried after exactly the server's `retry:`.
            failures = 1 if self._opened else failures + 1
            delay = reconnect_delay(
                self._retry, failures, client_error=outcome is _Outcome.CLIENT_ERROR
            )
            if self._retry_after is not None:
                delay = max(delay, self._retry_after)
                self._retry_after = None
            logger.info(
                "%s: %s; reconnecting to %s in %.2fs (attempt %d)",
                self.qualname,
                outcome.value,
                self.shown_url,
                delay,
                failures,
            )
            await anyio.sleep(delay)
            if self.service.metrics is not None:
                self.service.metrics.sse_reconnected(self.name)

    async def _connect_once(self, client: httpx.AsyncClient) -> _Outcome:
        self._opened = False
        headers = self._headers.copy()  # aconnect_sse adds to the headers it is given
        if self._last_event_id:
            headers["Last-Event-ID"] = self._last_event_id
            logger.info(
                "%s: connecting to %s (Last-Event-ID %r)",
                self.qualname,
                self.shown_url,
                self._last_event_id,
            )
        else:
            logger.info("%s: connecting to %s", self.qualname, self.shown_url)
        try:
            async with httpx_sse.aconnect_sse(client, "GET", self._url, headers=headers) as source:
                refused = self._check_response(source.response)
                if refused is not None:
                    return refused
                self._opened = True
                logger.info("%s: connected to %s", self.qualname, self.shown_url)
                finished = await self._consume(source)
        except httpx.HTTPError as exc:
            logger.warning(
                "%s: connection to %s lost: %s: %s",
                self.qualname,
                self.shown_url,
                type(exc).__name__,
                exc,
            )
            return _Outcome.LOST
        if finished:
            return _Outcome.FINISHED
        logger.info("%s: %s closed the stream", self.qualname, self.shown_url)
        return _Outcome.ENDED

    def _check_response(self, response: httpx.Response) -> _Outcome | None:
        """Classify an answer that is not an event stream; `None` when it is one."""
        status = response.status_code
        if status == 204:
            return _Outcome.NO_CONTENT
        if status == 429 or status >= 500:
            self._retry_after = _retry_after(response)
            logger.warning(
                "%s: %s answered %d %s",
                self.qualname,
                self.shown_url,
                status,
                response.reason_phrase,
            )
            return _Outcome.SERVER_ERROR
        if status != 200:
            logger.error(
                "%s: %s answered %d %s: check the endpoint and the headers setting",
                self.qualname,
                self.shown_url,
                status,
                response.reason_phrase,
            )
            return _Outcome.CLIENT_ERROR
        content_type = response.headers.get("content-type", "").partition(";")[0].strip()
        if content_type.lower() != "text/event-stream":
            logger.error(
                "%s: %s is not an event stream (Content-Type %r)",
                self.qualname,
                self.shown_url,
                content_type,
            )
            return _Outcome.CLIENT_ERROR
        return None

    async def _consume(self, source: httpx_sse.EventSource) -> bool:
        """Dispatch the events of one connection; True when the listener is done."""
        # httpx-sse's decoder starts each connection with an empty last event ID and
        # repeats the current one on every event; only a change is news to us, so the
        # ID carried over from the previous connection is kept until the server sends one.
        connection_id = ""
        events = source.aiter_sse()
        reading = True
        try:
            while True:
                reading = True
                try:
                    sse = await anext(events)
                except StopAsyncIteration:
                    return False
                reading = False
                if sse.retry is not None and sse.retry >= 0:  # the spec allows digits only
                    self._retry = sse.retry / 1000
                    logger.debug("%s: server asks for retry %dms", self.qualname, sse.retry)
                if sse.id != connection_id:
                    connection_id = self._last_event_id = sse.id
                # As the SSE spec says: an event with no data is not dispatched (its id
                # and retry still count).
                if not sse.data:
                    continue
                if self.spec.event_types is not None and sse.event not in self.spec.event_types:
                    continue
                await self._dispatch(sse)
                self._events += 1
                if self.service.metrics is not None:
                    self.service.metrics.sse_event(self.name)
                if self._stop_requested:
                    return True
                if self.spec.limit is not None and self._events >= self.spec.limit:
                    logger.info("%s: limit of %d events reached", self.qualname, self.spec.limit)
                    return True
        finally:
            if not reading:
                await _abandon(source.response, events)

    async def _dispatch(self, sse: httpx_sse.ServerSentEvent) -> None:
        try:
            data = self._decode(sse.data)
        except BadBody as exc:
            logger.warning(
                "%s: skipping event (type %r, id %r): %s",
                self.qualname,
                sse.event,
                self._last_event_id,
                exc,
            )
            return
        args: tuple[Any, ...] = (data,)
        if self._wants_event:
            event = Event(
                type=sse.event, data=sse.data, id=self._last_event_id or None, retry=sse.retry
            )
            args = (data, event)
        self._busy = True
        try:
            if not telemetry.on():
                await self._handle(args, sse)
            else:
                event_id = self._last_event_id or None
                with telemetry.handling(
                    _tracing.sse_call(self.qualname, self.service.name, sse.event, event_id)
                ):
                    await self._handle(args, sse)
        finally:
            self._busy = False

    async def _handle(self, args: tuple[Any, ...], sse: httpx_sse.ServerSentEvent) -> None:
        """Call the handler with one event, and again while its retry policy says so."""
        attempt = 1
        while not await self._call(args, sse, attempt):
            attempt += 1

    async def _call(
        self, args: tuple[Any, ...], sse: httpx_sse.ServerSentEvent, attempt: int
    ) -> bool:
        """Call the handler; False when it failed and is to be called again."""
        try:
            with handler_transaction(self.spec.transaction):
                await self._limited_call(self.handler, *args)
        except Exception as exc:
            policy = self._policy
            decision = policy.decide(exc, attempt) if policy is not None else None
            if decision is None or not decision.retry or self._stop_requested:
                _tracing.record_failure(exc)
                logger.exception(
                    "%s raised on event (type %r, id %r); the stream goes on",
                    self.qualname,
                    sse.event,
                    self._last_event_id,
                )
                return True
            logger.warning(
                "%s raised %s: %s on event (type %r, id %r) (attempt %d); retrying in %.2fs",
                self.qualname, type(exc).__name__, exc, sse.event, self._last_event_id,
                attempt, decision.delay,
            )  # fmt: skip
            # Not busy while waiting: a stop cancels the wait (the event is not handled).
            self._busy = False
            try:
                await anyio.sleep(decision.delay)
            finally:
                self._busy = True
            return False
        return True


async def _abandon(
    response: httpx.Response, events: AsyncGenerator[httpx_sse.ServerSentEvent]
) -> None:
    """Close a stream left in the middle, so that no async generator is left suspended.

    httpx and httpx-sse nest async generators without closing the inner ones when the
    outer one is closed; garbage-collected half-way, trio warns about each. Closing the
    response first and then reading on makes every one of them end with the read error
    (or the end of the body), which finishes them all.
    """
    # Shielded: this runs on the way out, cancelled or not; bounded: it must not hang.
    with anyio.move_on_after(ABANDON_TIMEOUT, shield=True):
        await response.aclose()
        with contextlib.suppress(httpx.HTTPError):
            async for _ in events:
                pass


def _retry_after(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds, when it is a number (dates are ignored)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN compares unequal to itself
        return None
    return min(seconds, MAX_RETRY_AFTER)
