"""Errors raised by farine. They all derive from `FarineError`."""

from __future__ import annotations

from typing import Any

__all__ = (
    "ConfigurationError",
    "FarineError",
    "HandlerTimeout",
    "RPCError",
    "ServiceNotFound",
    "SettingsError",
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
    """An RPC call failed: timeout, no server, or an error raised by the remote method.

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
