"""The operations HTTP endpoint: `/livez`, `/readyz` and `/metrics`, served by hypercorn.

It runs in the runtime's root task group, on the runtime's event loop (asyncio or
trio), from before the services start until after they stopped, so that `/readyz`
answers 503 during start-up and from the moment a stop begins.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from hypercorn.config import Config, Sockets

from farine._broker.loops import running_backend
from farine._connections import opened_connection
from farine.exceptions import ConfigurationError
from farine.ops._address import WORKER_INDEX_VARIABLE, split_address, worker_address
from farine.ops._health import not_ready
from farine.ops._metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

    from farine.ops._metrics import Metrics
    from farine.runtime import Runtime

__all__ = ("OpsEndpoint",)

logger = logging.getLogger("farine.ops")


class _ListenerConfig(Config):
    """hypercorn's configuration, serving a socket farine opened (so that a port in use
    is a clear error before anything starts, and port 0 gets a port we can show)."""

    def __init__(self, listener: socket.socket) -> None:
        super().__init__()
        self._listener = listener

    def create_sockets(self) -> Sockets:
        return Sockets(secure_sockets=[], insecure_sockets=[self._listener], quic_sockets=[])


class OpsEndpoint:
    """The operations endpoint of `runtime`, on `address` (`HOST:PORT`).

    Args:
        runtime: The runtime whose readiness and metrics it serves.
        address: Where to listen; with `FARINE_WORKER_INDEX` set, the port is offset by
            it (see `worker_address()`).
        metrics: The runtime's metrics.
    """

    def __init__(self, runtime: Runtime, address: str, metrics: Metrics) -> None:
        index = os.environ.get(WORKER_INDEX_VARIABLE, "").strip()
        if index:
            if not index.isdigit():
                raise ConfigurationError(
                    f"{WORKER_INDEX_VARIABLE} must be a worker index (0, 1, ...), not {index!r}"
                )
            address = worker_address(address, int(index))
        self.host, self.port = split_address(address)
        self.runtime = runtime
        self.metrics = metrics
        self._stop = anyio.Event()
        self._done = anyio.Event()

    @property
    def url(self) -> str:
        """The endpoint's base URL (its real port once `serve()` started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen, report started, and serve until `aclose()` (or cancelled).

        Raises:
            ConfigurationError: The address cannot be listened on (a port in use, ...).
        """
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            listener = socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve the operations endpoint on {self.host}:{self.port}: "
                f"{exc.strerror or exc}"
            ) from None
        # hypercorn closes the listener when it stops; closing it again is a no-op.
        with listener:
            listener.setblocking(False)
            self.port = int(listener.getsockname()[1])
            config = _ListenerConfig(listener)
            config.errorlog = logging.getLogger("farine.ops.http")
            config.accesslog = None
            config.graceful_timeout = 1.0
            logger.info("operations endpoint: %s (/livez, /readyz, /metrics)", self.url)
            task_status.started()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._run_server, config)
                    try:
                        await self._stop.wait()
                    finally:
                        # Cancelled too (the runtime failing): hypercorn is stopped
                        # through its trigger, as cancelling it leaves it in error.
                        self._stop.set()
            finally:
                self._done.set()

    async def _run_server(self, config: Config) -> None:
        # Shielded: `serve()` stops hypercorn through its trigger, which it obeys within
        # its graceful timeout.
        with anyio.CancelScope(shield=True):
            trigger = self._stop.wait
            # hypercorn's twin implementations; its WSGI half is untyped.
            if running_backend() == "trio":
                import hypercorn.trio

                await hypercorn.trio.serve(self._app, config, shutdown_trigger=trigger)  # pyright: ignore[reportUnknownMemberType]
            else:
                import hypercorn.asyncio

                await hypercorn.asyncio.serve(self._app, config, shutdown_trigger=trigger)  # pyright: ignore[reportUnknownMemberType]

    async def aclose(self) -> None:
        """Stop serving, within a few seconds."""
        self._stop.set()
        with anyio.move_on_after(5):
            await self._done.wait()

    # -- the ASGI application -------------------------------------------------------

    async def _app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain")
        elif path == "/livez":
            # Answered on the runtime's loop: an answer means the loop is responsive.
            await anyio.lowlevel.checkpoint()
            await _respond(send, 200, b"ok\n", "text/plain")
        elif path == "/readyz":
            reasons = await not_ready(self.runtime)
            status = 503 if reasons else 200
            body: dict[str, Any] = {"ready": not reasons}
            if reasons:
                body["not_ready"] = reasons
            await _respond(send, status, json.dumps(body).encode() + b"\n", "application/json")
        elif path == "/metrics":
            await self._sample()
            await _respond(send, 200, self.metrics.exposition(), CONTENT_TYPE)
        else:
            await _respond(send, 404, b"not found: try /livez, /readyz or /metrics\n", "text/plain")

    async def _sample(self) -> None:
        """Read the gauges that are sampled rather than counted: connection states,
        reconnections, busy worker threads."""
        for name, service in list(self.runtime.services.items()):
            hooks = self.metrics.service(name)
            hooks.worker_threads(service.workers.busy)
            connection = opened_connection(self.runtime, service.settings.amqp_uri)
            if connection is None or connection.closed or not connection.connected:
                hooks.connection(0, 0 if connection is None else connection.reconnects)
                continue
            blocked = await connection.blocked()
            hooks.connection(2 if blocked else 1, connection.reconnects)


async def _respond(send: ASGISendCallable, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
