"""AMQP messaging: consume and publish, on RabbitMQ or the in-process `memory://` broker.

```python
import farine.amqp

class Consume:
    @farine.amqp.consume(exchange="publish", routing_key="routing_key")
    def consume_dummy(self, body, message):
        message.ack()
```
"""

from __future__ import annotations

from farine._broker.errors import AccessRefused as AccessRefused
from farine._broker.errors import BrokerUnavailable as BrokerUnavailable
from farine._broker.errors import LoginRefused as LoginRefused
from farine._broker.errors import MessageStateError as MessageStateError
from farine._broker.errors import PublishError as PublishError
from farine._broker.errors import PublishTimeout as PublishTimeout
from farine._broker.errors import ResourceRefused as ResourceRefused
from farine._broker.errors import TLSVerificationError as TLSVerificationError
from farine._broker.errors import UnroutableError as UnroutableError
from farine._broker.message import Message as Message
from farine._broker.message import MessageProperties as MessageProperties
from farine._broker.message import Properties as Properties
from farine._retry import Backoff as Backoff
from farine._retry import Permanent as Permanent
from farine._retry import Retry as Retry
from farine._retry import Retryable as Retryable
from farine._retry import is_transient as is_transient

from ._consumer import ConsumeSpec as ConsumeSpec
from ._consumer import consume as consume
from ._publisher import AsyncPublisher as AsyncPublisher
from ._publisher import Publisher as Publisher
from ._publisher import PublishSpec as PublishSpec
from ._publisher import publish as publish
from ._publisher import publish_specs as publish_specs

__all__ = (
    "AccessRefused",
    "AsyncPublisher",
    "Backoff",
    "BrokerUnavailable",
    "ConsumeSpec",
    "LoginRefused",
    "Message",
    "MessageProperties",
    "MessageStateError",
    "Permanent",
    "Properties",
    "PublishError",
    "PublishSpec",
    "PublishTimeout",
    "Publisher",
    "ResourceRefused",
    "Retry",
    "Retryable",
    "TLSVerificationError",
    "UnroutableError",
    "consume",
    "is_transient",
    "publish",
    "publish_specs",
)
