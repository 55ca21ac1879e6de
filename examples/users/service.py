"""The seed README's Database example: a service using the models of `models.py`.

Run it from the `examples` folder (Ctrl-C stops it):

    farine migrate users --config users/farine.ini
    farine start users --config users/farine.ini

Each handler call runs with a database connection opened for it in its own worker
thread: `def` methods use the models (and `self.db`) directly, `async def` ones hand
blocking database work to `await self.db_run(fn, ...)`.

`select` consumes the exchange `exchange` as in the seed README; publish
`{"id": 1}` with the routing key `routing_key` to see it look the user up (with no
`amqp_uri` the broker is the in-process `memory://` one, so only this process can).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import anyio

import farine.amqp
import farine.execute
from farine.connectors.sql import WithDatabase

from .models import User

logger = logging.getLogger(__name__)


class Client(WithDatabase):  # WithDatabase only tells type checkers about self.db/db_run
    """Registers a user every second; looks a user up for each message it consumes."""

    def __init__(self) -> None:
        self.numbers = itertools.count(1)

    @farine.execute.method()
    async def register(self) -> None:
        await anyio.sleep(1)
        user = await self.db_run(self.create_user, f"user {next(self.numbers)}")
        logger.info("registered %s", user.to_json())

    def create_user(self, name: str) -> User:
        # A worker thread with its own connection: the models (and `self.db`) just work.
        return User.create(name=name)

    @farine.amqp.consume(exchange="exchange", routing_key="routing_key")
    def select(self, body: dict[str, Any], message: farine.amqp.Message) -> User | None:
        # The seed's handler (it selected the user of id 1): the message is acked when
        # it returns, after its connection went back to the pool.
        user = User.get_or_none(id=body.get("id", 1))
        logger.info("selected %s", user.to_json() if user is not None else None)
        return user
