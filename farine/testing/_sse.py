"""`sse_transport()`: an httpx transport serving Server-Sent Events, without a server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import httpx

from farine.codec import encode
from farine.stream import Event

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ("SSETransport", "sse_transport")


def _render(item: object) -> bytes:
    if isinstance(item, Event):
        lines: list[str] = []
        if item.id is not None:
            lines.append(f"id: {item.id}")
        if item.type != "message":
            lines.append(f"event: {item.type}")
        if item.retry is not None:
            lines.append(f"retry: {item.retry}")
        data = item.data
    else:
        lines = []
        data = item if isinstance(item, str) else encode(item).decode()
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


class SSETransport(httpx.AsyncBaseTransport):
    """Answers the first request with an event stream of the given events, and every
    later one (a reconnection) with 204 No Content, which stops a farine listener.

    Attributes:
        requests: Every request received, in order (their headers: `Last-Event-ID`, the
            `headers` setting, ...).
    """

    def __init__(self, events: Iterable[object]) -> None:
        self._body = b"".join(_render(item) for item in events)
        self.requests: list[httpx.Request] = []
        self._arrived: anyio.Event | None = None

    async def wait_for_requests(
        self,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109  # raises TimeoutError
    ) -> list[httpx.Request]:
        """Wait until `count` requests arrived (a listener reconnected, say); return them.

        Raises:
            TimeoutError: Fewer arrived within `timeout` seconds.
        """
        with anyio.fail_after(timeout):
            while len(self.requests) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return list(self.requests)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self._arrived is not None:
            self._arrived.set()
        if len(self.requests) > 1:
            return httpx.Response(204, request=request)
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=self._body,
            request=request,
        )


def sse_transport(events: Iterable[object]) -> SSETransport:
    """Return an httpx transport that serves `events` as a Server-Sent-Events stream.

    Give it to `running(..., http_transport=...)`: the services' SSE listeners then read
    these events from whatever endpoint they are configured with, and stop after them.

    Args:
        events: `farine.stream.Event` objects (with their `type`, `id`, `retry`), text
            sent as the data, or anything else, sent as JSON data.

    Example:
        ```python
        events = [Event(type="price", data='{"plum": 3}', id="1"), {"plum": 4}]
        async with farine.testing.running(
            Prices, http_transport=farine.testing.sse_transport(events)
        ) as app:
            calls = await app.wait_for("prices.on_price", count=2)
        ```
    """
    return SSETransport(events)
