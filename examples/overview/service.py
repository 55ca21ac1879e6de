"""The seed README's Overview example: one service mixes an SSE stream and RPC.

`Client` listens to a Server-Sent-Events stream (the `endpoint` setting) and forwards
each event's data by RPC to `myotherservice`, whose `process` method logs it. Run it
from the `examples` folder, with a stream to listen to (`overview/feed.py` serves one):

    python overview/feed.py &                         # events on :8000, one a second
    farine start overview --config overview/farine.ini

With no `amqp_uri` the two services talk through the in-process `memory://` broker; set
`amqp_uri` in `farine.ini` to run them (even in two processes) on RabbitMQ.
"""

from __future__ import annotations

import logging
from typing import Any

import farine.rpc
import farine.stream

logger = logging.getLogger(__name__)


class Client:
    """Forwards each event of the stream to `myotherservice`, as in the seed."""

    @farine.stream.http()
    def get(self, data: Any) -> Any:
        # A `def` handler runs in a worker thread: `self.send` makes a blocking RPC call.
        return self.send(data)

    @farine.rpc.client("myotherservice")
    def send(self, rpc: farine.rpc.Client, data: Any) -> Any:
        # `rpc` is injected: callers write `self.send(data)`.
        return rpc.process(data)


class MyOtherService:
    """Serves `process` over RPC: the service name is the lowercase class name."""

    @farine.rpc.method()
    def process(self, data: Any) -> bool:
        logger.info("processed %r", data)
        return True
