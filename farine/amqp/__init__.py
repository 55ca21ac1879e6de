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

from ._consumer import ConsumeSpec as ConsumeSpec
from ._consumer import consume as consume
from ._errors import BrokerUnavailable as BrokerUnavailable
from ._errors import MessageStateError as MessageStateError
from ._errors import PublishError as PublishError
from ._errors import PublishTimeout as PublishTimeout
from ._errors import UnroutableError as UnroutableError
from ._message import Message as Message
from ._message import MessageProperties as MessageProperties
from ._message import Properties as Properties
from ._publisher import AsyncPublisher as AsyncPublisher
from ._publisher import Publisher as Publisher
from ._publisher import publish as publish

__all__ = (
    "AsyncPublisher",
    "BrokerUnavailable",
    "ConsumeSpec",
    "Message",
    "MessageProperties",
    "MessageStateError",
    "Properties",
    "PublishError",
    "PublishTimeout",
    "Publisher",
    "UnroutableError",
    "consume",
    "publish",
)
