"""Errors of the AMQP layer; they all derive from `FarineError`."""

from __future__ import annotations

from farine.exceptions import FarineError

__all__ = (
    "BrokerUnavailable",
    "MessageStateError",
    "PublishError",
    "PublishTimeout",
    "UnroutableError",
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
