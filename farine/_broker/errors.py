"""Errors of the AMQP layer; they all derive from `FarineError`."""

from __future__ import annotations

from typing import Any

from farine.exceptions import ConfigurationError, FarineError

__all__ = (
    "BrokerUnavailable",
    "MessageStateError",
    "PublishError",
    "PublishTimeout",
    "UnroutableError",
    "declaration_mismatch",
)


class BrokerUnavailable(FarineError):
    """The broker could not be reached within `connect_retry_timeout` at start-up."""


class PublishError(FarineError):
    """A message could not be published: the broker refused it or the publish failed."""


class UnroutableError(PublishError):
    """The broker returned a `mandatory` message: no queue is bound to receive it."""


class PublishTimeout(PublishError):
    """A publish was not confirmed within `publish_timeout` (broker down or too slow)."""


class MessageStateError(FarineError):
    """A message was acknowledged, rejected or requeued twice."""


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
