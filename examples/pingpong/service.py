"""A publisher and a consumer talking over AMQP.

Run it from the `examples` folder with `farine start pingpong`: with no configuration
it uses the in-process `memory://` broker, so nothing else needs to be installed. Point
it at RabbitMQ with `amqp_uri = amqp://guest:guest@127.0.0.1:5672/` in the INI file.
Stop it with Ctrl-C.
"""

from __future__ import annotations

import logging
import time

import msgspec

import farine.amqp
import farine.execute

logger = logging.getLogger(__name__)


class Ball(msgspec.Struct):
    """The message: typed, so a bad body is rejected before the handler runs."""

    n: int
    sent_by: str


class Pong:
    """Consumes the balls (an `async def` handler, run on the event loop)."""

    @farine.amqp.consume(exchange="pingpong", routing_key="ping")
    async def on_ball(self, body: Ball, message: farine.amqp.Message) -> None:
        logger.info("pong: received ball %d from %s", body.n, body.sent_by)
        # Returning acks the message; raising retries it later or dead-letters it.


class Ping:
    """Publishes a ball every second (a `def` method, run in a worker thread)."""

    def __init__(self) -> None:
        self.sent = 0

    @farine.execute.method()
    @farine.amqp.publish(exchange="pingpong", routing_key="ping")
    def serve(self, publish: farine.amqp.Publisher) -> None:
        self.sent += 1
        publish(Ball(n=self.sent, sent_by="ping"))  # blocks until the broker confirms
        logger.info("ping: sent ball %d", self.sent)
        time.sleep(1)
