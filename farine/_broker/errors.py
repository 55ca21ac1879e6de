"""Errors of the AMQP layer; they all derive from `FarineError`."""

from __future__ import annotations

from farine.exceptions import ConfigurationError, FarineError

__all__ = (
    "AccessRefused",
    "BrokerUnavailable",
    "MessageStateError",
    "PublishError",
    "PublishTimeout",
    "UnroutableError",
)


class BrokerUnavailable(FarineError):
    """The broker could not be reached within `connect_retry_timeout` at start-up."""


class AccessRefused(BrokerUnavailable, ConfigurationError):
    """The broker refused the login or the virtual host: not retried at start-up.

    A wrong user name or password, or a virtual host that does not exist or that the user
    may not use. It is a `BrokerUnavailable` (code catching that keeps working) and a
    `ConfigurationError` (the settings must change).
    """


class PublishError(FarineError):
    """A message could not be published: the broker refused it or the publish failed."""


class UnroutableError(PublishError):
    """The broker returned a `mandatory` message: no queue is bound to receive it."""


class PublishTimeout(PublishError):
    """A publish was not confirmed within `publish_timeout` (broker down or too slow)."""


class MessageStateError(FarineError):
    """A message was acknowledged, rejected or requeued twice."""
