"""The broker behind `farine.amqp`: the only package that imports asyncio, trio or aiormq.

`open_connection()` opens the connection a runtime shares between its services
(`Runtime.resource`); `shared_connection()` gives code with no runtime (a plain script,
a thread of its own) one process-wide connection per URI, closed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import anyio

from farine._broker.aiormq.connection import (
    AmqpConnection,
    connection_name,
    open_amqp,
    open_amqp_blocking,
)
from farine._broker.interface import (
    DIRECT_REPLY_TO,
    Binding,
    Connection,
    ConnectionOptions,
    Consumer,
    ExchangeSpec,
    Outgoing,
    QueueSpec,
    ReplyChannel,
    Topology,
    is_direct_reply_to,
)
from farine._broker.memory import MemoryBroker, MemoryConnection, get_broker

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

logger = logging.getLogger("farine.amqp")

__all__ = (
    "DIRECT_REPLY_TO",
    "AmqpConnection",
    "Binding",
    "Connection",
    "ConnectionOptions",
    "Consumer",
    "ExchangeSpec",
    "MemoryBroker",
    "MemoryConnection",
    "Outgoing",
    "QueueSpec",
    "ReplyChannel",
    "Topology",
    "close_shared_connections",
    "connection_name",
    "get_broker",
    "is_direct_reply_to",
    "is_memory",
    "open_connection",
    "shared_connection",
)


def is_memory(uri: str) -> bool:
    """True for the in-process broker's URIs (`memory://...`)."""
    return uri.startswith("memory:")


@contextlib.asynccontextmanager
async def open_connection(uri: str, options: ConnectionOptions) -> AsyncGenerator[Connection]:
    """Open a connection to `uri` for the running event loop, closed on exit."""
    if is_memory(uri):
        connection = MemoryConnection(uri, options)
        logger.info("AMQP broker: %s (in-process memory broker)", uri)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(connection.expire_messages)
                try:
                    yield connection
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await connection.aclose()
        return
    async with open_amqp(uri, options) as amqp:
        yield amqp


_shared: dict[str, Connection] = {}
_shared_lock = threading.Lock()
_atexit_registered = False


def shared_connection(uri: str, options: ConnectionOptions) -> Connection:
    """Return this process's connection to `uri` for code without a runtime (blocking).

    AMQP connections opened here run on a thread of their own, so they serve any thread
    and any event loop; they are closed when the interpreter exits.
    """
    global _atexit_registered
    with _shared_lock:
        connection = _shared.get(uri)
        if connection is not None and not connection.closed:
            return connection
        if is_memory(uri):
            connection = MemoryConnection(uri, options)
        else:
            connection = open_amqp_blocking(uri, options)
        _shared[uri] = connection
        if not _atexit_registered:
            atexit.register(close_shared_connections)
            _atexit_registered = True
        return connection


def close_shared_connections() -> None:
    """Close the connections `shared_connection()` opened (runs at exit)."""
    with _shared_lock:
        connections = list(_shared.values())
        _shared.clear()
    for connection in connections:
        if isinstance(connection, AmqpConnection):
            connection.close_blocking()
        else:
            connection.closed = True
