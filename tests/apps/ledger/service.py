"""A consumer that logs each message's number: the fault tests' service in a process.

Its exchange and queue come from the environment (`LEDGER_NAME`), so that each test has
its own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import farine.amqp

log = logging.getLogger("ledger")

NAME = os.environ.get("LEDGER_NAME", "farine-test-ledger")


class Ledger:
    @farine.amqp.consume(exchange=NAME, routing_key="rk", queue=NAME)
    async def record(self, body: Any, message: farine.amqp.Message) -> None:
        log.info("handled %s", body["n"])
