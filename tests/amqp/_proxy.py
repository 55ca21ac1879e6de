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
    a client looks like the broker going away.
    """

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.accepted = 0

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        async with listener, anyio.create_task_group() as tg:
            task_status.started()
            await listener.serve(self._forward, task_group=tg)

    async def _forward(self, client: SocketStream) -> None:
        self.accepted += 1
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", self.target) as upstream,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._pump, client, upstream, tg.cancel_scope)
            tg.start_soon(self._pump, upstream, client, tg.cancel_scope)

    @staticmethod
    async def _pump(source: ByteStream, sink: ByteStream, scope: anyio.CancelScope) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        scope.cancel()
