"""Errors raised by farine. They all derive from `FarineError`."""

from __future__ import annotations

from typing import Any

__all__ = (
    "ConfigurationError",
    "FarineError",
    "HandlerTimeout",
    "MethodNotFound",
    "RPCError",
    "RPCTimeout",
    "RemoteError",
    "ServiceNotFound",
    "ServiceUnavailable",
    "SettingsError",
    "UnknownService",
)


class FarineError(Exception):
    """Base class of every error farine raises."""


class SettingsError(FarineError):
    """A configuration file or value is wrong; the message names file, section and key."""


class ConfigurationError(FarineError):
    """A service or entrypoint is declared in a way farine cannot run."""


class HandlerTimeout(FarineError, TimeoutError):
    """A handler call ran past its time limit (`timeout=` or the `handler_timeout` setting).

    An `async def` handler was cancelled at the limit; a `def` one was abandoned in its
    worker thread (which finishes on its own, its result dropped). A `TimeoutError`, so
    the failure counts as transient.
    """


class ServiceNotFound(FarineError):
    """The module named on the command line (or its `service` submodule) does not exist."""


class RPCError(FarineError):
    """An RPC call failed. Its subclasses tell why; catch this one for any failure.

    `RPCTimeout`, `UnknownService`, `MethodNotFound`, `RemoteError` and
    `ServiceUnavailable` are the kinds a call raises; a plain `RPCError` is a failure of
    none of them (the connection was lost with the call in flight, the client closed).

    Attributes:
        remote_type: The name of the exception type raised by the remote method, if any.
        remote_message: Its message, if any.
        remote_traceback: The remote traceback text, when the server sends it.
        remote_data: Structured data about the error (the remote exception's
            `rpc_data` attribute, decoded from JSON), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        remote_type: str | None = None,
        remote_message: str | None = None,
        remote_traceback: str | None = None,
        remote_data: Any = None,
    ) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.remote_data = remote_data


class RPCTimeout(RPCError):
    """The call's deadline passed before its reply (or a stream's end) arrived.

    The method may or may not have run; the server cancels it when it notices.
    """


class UnknownService(RPCError):
    """No such service: its exchange does not exist, or no running server serves it.

    Raised as soon as the broker returns the request, not at the deadline.
    """


class MethodNotFound(RPCError):
    """The service is running but has no such RPC method (the request was unroutable).

    Only methods decorated with `farine.rpc.method()` can be called. Raised as soon as
    the broker returns the request, not at the deadline.
    """


class RemoteError(RPCError):
    """The remote method raised an exception that the caller has not registered.

    `remote_type`, `remote_message`, `remote_traceback` and `remote_data` describe it.
    A reply that does not decode into the method's return annotation is one too.
    """


class ServiceUnavailable(RPCError):
    """No connection to the broker could be had within the call's deadline."""
