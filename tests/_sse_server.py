"""A tiny scripted Server-Sent-Events server on anyio TCP, for the stream tests.

Written by hand (not an ASGI app) so that a test controls exactly how a connection
ends: a clean end of stream, a bare FIN in the middle of the chunked body, or a TCP
reset. It records every request (headers, arrival time) so tests assert on what the
server saw instead of sleeping.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio
from anyio.abc import SocketAttribute

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Sequence

    from anyio.abc import SocketStream

__all__ = ("Ending", "Reply", "Request", "SSEServer", "serve_sse")

#: How a reply ends once its body is sent: `hold` keeps the stream open (idle) until
#: `SSEServer.drop()` or the server stops; `close` ends the chunked body properly;
#: `eof` closes the socket mid-body (FIN); `reset` aborts it with a TCP RST.
Ending = Literal["hold", "close", "eof", "reset"]

_REASONS = {200: "OK", 204: "No Content", 401: "Unauthorized", 429: "Too Many Requests"}


@dataclass(frozen=True)
class Reply:
    """What the server answers to one connection."""

    body: str = ""
    status: int = 200
    end: Ending = "hold"
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Request:
    """One request as the server read it."""

    target: str
    headers: dict[str, str]
    at: float
    #: Every header line as sent, names lower-cased (`headers` keeps the last of each).
    lines: tuple[tuple[str, str], ...] = ()


@dataclass(eq=False)
class _Connection:
    stream: SocketStream
    drop: anyio.Event = field(default_factory=anyio.Event)
    mode: Ending = "eof"


class SSEServer:
    """The scripted server: connection *n* gets `replies[n]` (the last one repeats)."""

    def __init__(self, replies: Sequence[Reply], port: int) -> None:
        self.replies = list(replies) or [Reply()]
        self.port = port
        self.requests: list[Request] = []
        #: When the server ended (or dropped) each connection, by connection number.
        self.closed_at: dict[int, float] = {}
        self._open: dict[int, _Connection] = {}
        self._changed = anyio.Event()

    def url(self, path: str = "/events") -> str:
        """The URL of the stream."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_requests(self, count: int) -> list[Request]:
        """Wait until `count` requests have arrived and return them all."""
        while len(self.requests) < count:
            await self._changed.wait()
        return self.requests

    def drop(self, mode: Ending = "reset") -> None:
        """End every open, held connection now: `reset` (RST), `eof` (FIN) or `close`."""
        for connection in self._open.values():
            connection.mode = mode
            connection.drop.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            request = await _read_request(stream)
            if request is None:
                return
            number = len(self.requests)
            self.requests.append(request)
            reply = self.replies[min(number, len(self.replies) - 1)]
            connection = _Connection(stream, mode=reply.end)
            self._open[number] = connection
            self._notify()
            try:
                await self._answer(connection, reply)
                if reply.end == "hold" and reply.status == 200:
                    await connection.drop.wait()
                self.closed_at[number] = anyio.current_time()
                await _finish(stream, connection.mode)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the client went away first: nothing left to tell it
            finally:
                del self._open[number]

    async def _answer(self, connection: _Connection, reply: Reply) -> None:
        reason = _REASONS.get(reply.status, "Status")
        head = f"HTTP/1.1 {reply.status} {reason}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        if reply.status != 200:
            head += "Content-Length: 0\r\nConnection: close\r\n\r\n"
            await connection.stream.send(head.encode())
            connection.mode = "eof"  # the answer is complete: just close the socket
            return
        head += (
            f"Content-Type: {reply.content_type}\r\n"
            "Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await connection.stream.send(head.encode())
        if reply.body:
            await send_chunk(connection.stream, reply.body)


async def send_chunk(stream: SocketStream, text: str) -> None:
    """Send `text` as one HTTP chunk."""
    data = text.encode()
    await stream.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")


async def _finish(stream: SocketStream, mode: Ending) -> None:
    if mode == "close":
        await stream.send(b"0\r\n\r\n")
    elif mode == "reset":
        # SO_LINGER with a zero timeout turns close() into a TCP RST.
        raw = stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def _read_request(stream: SocketStream) -> Request | None:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        try:
            buffer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    head = buffer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    request_line, *lines = head.split("\r\n")
    pairs = tuple(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines)
    )
    target = request_line.split(" ")[1]
    return Request(target=target, headers=dict(pairs), at=anyio.current_time(), lines=pairs)


@contextlib.asynccontextmanager
async def serve_sse(replies: Sequence[Reply], *, port: int = 0) -> AsyncGenerator[SSEServer]:
    """Run an `SSEServer` on 127.0.0.1 (an ephemeral port unless `port` is given)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    async with listener, anyio.create_task_group() as tg:
        bound = listener.extra(SocketAttribute.local_port)
        server = SSEServer(replies, bound)
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
