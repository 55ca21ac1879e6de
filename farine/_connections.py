"""Which broker connection a publisher, consumer, RPC client or RPC server uses.

Inside a runtime, one connection per broker URI is shared by every service of the
process (`Runtime.resource`), opened by the first service that needs it, with its
settings. Code running without a runtime (a plain script, a thread of its own) gets a
process-wide connection per URI instead (`shared_connection`).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread

from farine._broker import (
    Connection,
    ConnectionOptions,
    connection_name,
    is_memory,
    open_connection,
    shared_connection,
)
from farine.runtime import current_runtime

if TYPE_CHECKING:
    from farine.runtime import Runtime
    from farine.settings import ServiceSettings

__all__ = ("get_connection", "get_connection_blocking", "opened_connection", "options_for")

# Connections known to be open, per URI: a worker thread can publish through one of
# them without a round trip to the event loop just to look it up.
_open: dict[str, Connection] = {}
_open_lock = threading.Lock()


def options_for(settings: ServiceSettings) -> ConnectionOptions:
    """Connection options from a service's settings."""
    max_retries = settings.retry_policy.get("max_retries", 5)
    return ConnectionOptions(
        heartbeat=settings.heartbeat,
        connect_timeout=settings.connect_timeout,
        connect_retry_timeout=settings.connect_retry_timeout,
        publish_timeout=settings.publish_timeout,
        retry=settings.retry,
        max_retries=int(max_retries) if isinstance(max_retries, int | float | str) else 5,
        name=connection_name(f"farine-{os.getpid()}"),
        fast_path=settings.amqp_fast_path,
        tls_ca=settings.amqp_tls_ca,
        tls_cert=settings.amqp_tls_cert,
        tls_key=settings.amqp_tls_key,
        tls_verify=settings.amqp_tls_verify,
    )


def _resource_key(uri: str) -> str:
    return "amqp:" + uri


def opened_connection(runtime: Runtime, uri: str) -> Connection | None:
    """The connection of `runtime` to `uri`, if it opened one (None: not yet)."""
    connection = runtime.opened_resource(_resource_key(uri))
    return connection if isinstance(connection, Connection) else None


def _remember(uri: str, connection: Connection) -> Connection:
    with _open_lock:
        _open[uri] = connection
    return connection


async def get_connection(settings: ServiceSettings) -> Connection:
    """Return the connection to `settings.amqp_uri` for async code (opening it if needed)."""
    uri = settings.amqp_uri
    runtime = current_runtime()
    if runtime is not None and runtime.owns_current_loop():
        connection = await runtime.resource(
            _resource_key(uri), lambda: open_connection(uri, options_for(settings))
        )
        return _remember(uri, connection)
    if is_memory(uri):
        return shared_connection(uri, options_for(settings))
    # Connecting may take a while (retries): do it off the event loop.
    return await anyio.to_thread.run_sync(shared_connection, uri, options_for(settings))


def get_connection_blocking(settings: ServiceSettings) -> Connection:
    """Return the connection to `settings.amqp_uri` for blocking code (a thread, a script)."""
    uri = settings.amqp_uri
    with _open_lock:
        known = _open.get(uri)
    if known is not None and not known.closed:
        return known
    runtime = current_runtime()
    # Blocking code running on the runtime's loop thread itself cannot wait for that loop
    # (it would deadlock): it gets a connection of its own.
    if runtime is not None and runtime.token is not None and not runtime.owns_current_loop():
        return anyio.from_thread.run(get_connection, settings, token=runtime.token)
    return shared_connection(uri, options_for(settings))
