"""A consumer that counts each message id in a ledger table: the fault tests' service.

Its exchange and queue come from the environment (`LEDGER_NAME`), so that each test has
its own. With a database configured, each message adds one to its id's row of the
`ledger` table (so a message handled twice shows as 2); without one, it only logs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import farine.amqp
from farine.connectors.sql import WithDatabase

log = logging.getLogger("ledger")

NAME = os.environ.get("LEDGER_NAME", "farine-test-ledger")

RECORD = (
    "INSERT INTO ledger (id, hits) VALUES (%s, 1) "
    "ON CONFLICT (id) DO UPDATE SET hits = ledger.hits + 1"
)


class Ledger(WithDatabase):
    @farine.amqp.consume(exchange=NAME, routing_key="rk", queue=NAME)
    def record(self, body: Any, message: farine.amqp.Message) -> None:
        if self.service_has_database():
            self.db.execute_sql(RECORD, (str(body["n"]),))  # pyright: ignore[reportUnknownMemberType]
        log.info("handled %s", body["n"])

    def service_has_database(self) -> bool:
        return bool(os.environ.get("LEDGER_DATABASE"))
