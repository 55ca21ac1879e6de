"""A TCP proxy the tests start and stop in front of RabbitMQ, to cut the broker off."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from anyio.abc import ByteStream, SocketStream, TaskStatus

__all__ = ("TcpProxy", "free_port")


def free_port() -> int:
    """A TCP port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target`; `serve()` until cancelled.

    Cancelling `serve()` closes the listener and every forwarded connection, which to
    a client looks like the broker going away. `hold_replies()` holds what the broker
    sends (confirms, deliveries) until `release_replies()`, while what the client sends
    still goes through; `wait_sent(marker)` returns once the client sent those bytes.
    """

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.accepted = 0
        self._released: anyio.Event | None = None  # set: replies flow again
        self._sent = b""  # what clients sent while replies were held
        self._sent_more = anyio.Event()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        async with listener, anyio.create_task_group() as tg:
            task_status.started()
            await listener.serve(self._forward, task_group=tg)

    def hold_replies(self) -> None:
        self._released = anyio.Event()
        self._sent = b""

    def release_replies(self) -> None:
        if self._released is not None:
            self._released.set()
            self._released = None

    async def wait_sent(self, marker: bytes) -> None:
        """Return once a client sent `marker` while replies were held."""
        while marker not in self._sent:
            self._sent_more = anyio.Event()
            await self._sent_more.wait()

    async def _forward(self, client: SocketStream) -> None:
        self.accepted += 1
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", self.target) as upstream,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._pump, client, upstream, tg.cancel_scope, True)
            tg.start_soon(self._pump, upstream, client, tg.cancel_scope, False)

    async def _pump(
        self, source: ByteStream, sink: ByteStream, scope: anyio.CancelScope, up: bool
    ) -> None:
        try:
            async for chunk in source:
                released = self._released
                if released is not None:
                    if up:
                        self._sent += chunk
                        self._sent_more.set()
                    else:
                        await released.wait()
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        scope.cancel()
