"""The seed README's Database example: a service using the models of `models.py`.

Run it from the `examples` folder (Ctrl-C stops it):

    farine migrate users --config users/farine.ini
    farine start users --config users/farine.ini

Each handler call runs with a database connection opened for it in its own worker
thread: `def` methods use the models (and `self.db`) directly, `async def` ones hand
blocking database work to `await self.db_run(fn, ...)`.
"""

from __future__ import annotations

import itertools
import logging

import anyio

import farine.execute
from farine.connectors.sql import WithDatabase

from .models import User

logger = logging.getLogger(__name__)


class Client(WithDatabase):  # WithDatabase only tells type checkers about self.db/db_run
    """Registers a user every second and can look users up."""

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

    def select(self, user_id: int) -> User | None:
        # The seed's handler; once farine.amqp exists it is decorated with
        # `@farine.amqp.consume(exchange="exchange", routing_key="routing_key")` and
        # takes `(self, body, message)`.
        return User.get_or_none(id=user_id)
