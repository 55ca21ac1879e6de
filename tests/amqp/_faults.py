"""A TCP proxy that injects faults between farine and RabbitMQ (anyio, both backends).

```python
proxy = FaultProxy(5672)
async with anyio.create_task_group() as tg:
    await tg.start(proxy.serve)
    proxy.blackhole()      # the connections stay open, nothing goes through
    proxy.heal()           # back to passing bytes
```

Modes (each applies to the connections open now and to those accepted later):

- `heal()`: pass bytes both ways;
- `reset()`: abort every open connection (TCP RST); new ones pass;
- `blackhole(up=..., down=...)`: drop the bytes going to the broker (`up`) and/or to the
  client (`down`), keeping the sockets open: a half-open connection;
- `slow(delay)`: hold each chunk `delay` seconds before passing it on;
- `cut_after(n)`: pass `n` more bytes to the client, then abort that connection (once);
- `refuse()`: close the listening socket, so connecting fails; `heal()` listens again.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import TYPE_CHECKING

import anyio
from anyio.abc import SocketAttribute

from tests.amqp._proxy import free_port
from tests.amqp._rabbit import RABBITMQ_PORT

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from anyio.abc import SocketStream, TaskGroup, TaskStatus

__all__ = ("FaultProxy", "serving_proxy")


class _Link:
    """One proxied connection: the client's socket, the broker's, and their task group."""

    def __init__(self, client: SocketStream, upstream: SocketStream, tg: TaskGroup) -> None:
        self.client = client
        self.upstream = upstream
        self.tg = tg

    def abort(self) -> None:
        for stream in (self.client, self.upstream):
            raw = stream.extra(SocketAttribute.raw_socket)
            # Linger 0: closing sends a TCP RST rather than a FIN.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.tg.cancel_scope.cancel()


class FaultProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target`, with faults on demand (see above)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        #: Connections accepted so far.
        self.accepted = 0
        #: Bytes passed to clients so far.
        self.bytes_down = 0
        self._links: set[_Link] = set()
        self._drop_up = False
        self._drop_down = False
        self._delay = 0.0
        self._cut_in: int | None = None
        self._listening: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the proxy until cancelled (every connection is then closed)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self._listen)
            task_status.started()
            await anyio.sleep_forever()

    async def _listen(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            self._listening = scope
            listener = await anyio.create_tcp_listener(
                local_host="127.0.0.1", local_port=self.port, reuse_port=False
            )
            async with listener:
                task_status.started()
                assert self._tg is not None
                await listener.serve(self._forward, task_group=self._tg)

    # -- modes ------------------------------------------------------------------------

    def heal(self) -> None:
        """Pass bytes both ways again (and listen again after `refuse()`)."""
        self._drop_up = self._drop_down = False
        self._delay = 0.0
        self._cut_in = None
        if self._listening is None and self._tg is not None:
            self._tg.start_soon(self._listen_again)

    async def _listen_again(self) -> None:
        assert self._tg is not None
        await self._tg.start(self._listen)

    def reset(self) -> None:
        """Abort every open connection with a TCP RST."""
        for link in list(self._links):
            link.abort()

    def blackhole(self, *, up: bool = True, down: bool = True) -> None:
        """Drop bytes to the broker (`up`) and/or to the client (`down`), sockets open."""
        self._drop_up, self._drop_down = up, down

    def slow(self, delay: float) -> None:
        """Hold each chunk `delay` seconds before passing it on."""
        self._delay = delay

    def cut_after(self, count: int) -> None:
        """Pass `count` more bytes to the client, then abort its connection (once)."""
        self._cut_in = count

    def refuse(self) -> None:
        """Stop listening (connecting fails) and abort every open connection."""
        if self._listening is not None:
            self._listening.cancel()
            self._listening = None
        self.reset()

    # -- forwarding -------------------------------------------------------------------

    async def _forward(self, client: SocketStream) -> None:
        self.accepted += 1
        async with client:
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.target)
            except OSError:
                return  # the broker itself is down: the client sees the connection close
            async with upstream, anyio.create_task_group() as tg:
                link = _Link(client, upstream, tg)
                self._links.add(link)
                try:
                    tg.start_soon(self._pump, link, True)
                    await self._pump(link, False)
                finally:
                    self._links.discard(link)

    async def _pump(self, link: _Link, up: bool) -> None:
        source, sink = (link.client, link.upstream) if up else (link.upstream, link.client)
        try:
            async for chunk in source:
                if self._delay:
                    await anyio.sleep(self._delay)
                if self._drop_up if up else self._drop_down:
                    continue
                if not up and self._cut_in is not None:
                    if len(chunk) >= self._cut_in:
                        head = chunk[: self._cut_in]
                        self._cut_in = None
                        if head:
                            await sink.send(head)
                            self.bytes_down += len(head)
                        link.abort()
                        return
                    self._cut_in -= len(chunk)
                await sink.send(chunk)
                if not up:
                    self.bytes_down += len(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        link.tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def serving_proxy(target: int | None = None) -> AsyncGenerator[FaultProxy]:
    """A `FaultProxy` to port `target` (default: the test broker's), serving until the
    block ends."""
    proxy = FaultProxy(target or RABBITMQ_PORT)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        yield proxy
        tg.cancel_scope.cancel()
