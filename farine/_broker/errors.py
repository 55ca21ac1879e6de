"""Errors of the AMQP layer; they all derive from `FarineError`."""

from __future__ import annotations

from typing import Any

from farine.exceptions import ConfigurationError, FarineError

__all__ = (
    "AccessRefused",
    "BrokerUnavailable",
    "LoginRefused",
    "MessageStateError",
    "PublishError",
    "PublishTimeout",
    "ResourceRefused",
    "TLSVerificationError",
    "UnroutableError",
    "declaration_mismatch",
)


class BrokerUnavailable(FarineError):
    """The broker could not be reached within `connect_retry_timeout` at start-up.

    Args:
        message: The error, with the limit that was reached.
        failure: What failed, without the limit (default: `message`), for callers that
            bound the connection by a limit of their own, such as an RPC call's timeout.
    """

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it

    def __init__(self, message: str, *, failure: str | None = None) -> None:
        super().__init__(message)
        self.failure = message if failure is None else failure


class PublishError(FarineError):
    """A message could not be published: the broker refused it or the publish failed."""

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it


class AccessRefused(ConfigurationError):
    """The broker refused this user something (403 ACCESS_REFUSED): never retried.

    The settings or the broker's users and permissions must change. Catch it to handle
    both kinds below.
    """

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it


class LoginRefused(AccessRefused, BrokerUnavailable):
    """The broker refused the login or the virtual host, so no connection opened.

    A wrong user name or password, or a virtual host that does not exist or that the user
    may not use. Also a `BrokerUnavailable`, so code catching that keeps working.
    """

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it


class ResourceRefused(AccessRefused, PublishError):
    """The user may not use an exchange or a queue: its permissions do not cover it.

    Also a `PublishError` when a publish was refused.
    """

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it


class TLSVerificationError(BrokerUnavailable, ConfigurationError):
    """The broker's TLS certificate was not accepted: not retried at start-up.

    Its CA is not the one configured (`amqp_tls_ca`), it does not name the host connected
    to, or it has expired. farine never falls back to plain AMQP.
    """

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it


class UnroutableError(PublishError):
    """The broker returned a `mandatory` message: no queue is bound to receive it."""

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it


class PublishTimeout(PublishError):
    """A publish was not confirmed within `publish_timeout` (broker down or too slow)."""

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it


class MessageStateError(FarineError):
    """A message was acknowledged, rejected or requeued twice."""

    __module__ = "farine.amqp"  # where users import it from, as tracebacks show it


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def declaration_mismatch(
    kind: str, name: str, argument: str, existing: Any, requested: Any
) -> ConfigurationError:
    """The error of a declaration the broker refused (PRECONDITION_FAILED) because the
    `kind` (queue or exchange) `name` exists with another value of `argument`.

    Example:
        ```python
        raise declaration_mismatch("queue", "orders", "x-queue-type", "classic", "quorum")
        ```
    """
    return ConfigurationError(
        f"{kind} {name!r} exists with {argument} = {_shown(existing)}, but is declared "
        f"with {argument} = {_shown(requested)} (PRECONDITION_FAILED): declare it as it "
        f"is, or delete the {kind} so that it can be declared anew"
    )
