"""A consumer whose log says which worker process handled each message."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import farine.amqp

log = logging.getLogger("workerapp")

#: Unique per test run, so that runs never share a queue.
EXCHANGE = os.environ.get("WORKERAPP_EXCHANGE", "workerapp")


class Workerapp:
    @farine.amqp.consume(exchange=EXCHANGE, routing_key="job", queue=f"{EXCHANGE}-jobs", prefetch=1)
    def job(self, body: dict[str, Any], message: farine.amqp.Message) -> None:
        time.sleep(0.02)  # simulated work: a busy worker leaves the next message to the other
        log.info("job %d done by worker %s", body["n"], os.environ.get("FARINE_WORKER"))
