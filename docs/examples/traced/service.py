"""Two services whose spans are printed on stdout: one trace from Ping's run to Pong."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import farine.amqp
import farine.execute

provider = TracerProvider(resource=Resource.create({"service.name": "traced"}))
# In production: BatchSpanProcessor(OTLPSpanExporter()) to your collector.
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(provider)

log = logging.getLogger("traced")


class Pong:  # first: its queue exists before Ping starts
    @farine.amqp.consume(exchange="ping", routing_key="ball")
    def ball(self, body: dict[str, Any], message: farine.amqp.Message) -> None:
        log.info("pong: got ball %d", body["n"])


class Ping:
    @farine.execute.method(restart=False)
    @farine.amqp.publish(exchange="ping", routing_key="ball")
    def serve(self, publish: farine.amqp.Publisher) -> None:
        publish({"n": 1})
