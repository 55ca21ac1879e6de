"""The seed README's `service.py` of the Database example.

Changes from the README: Python 3 needs the relative import `from .models import User`,
and the handler records what it selected so that a test can see it (the seed's query,
`User.select().where(User.id == 1)`, is lazy: it would run after the call's connection
is closed, so it is run here).
"""

from __future__ import annotations

from typing import Any

import farine.amqp
from tests.amqp.conftest import Recorder

from .models import User


class Client:
    def __init__(self) -> None:
        self.selected = Recorder()

    @farine.amqp.consume(exchange="exchange", routing_key="routing_key")
    def select(self, body: Any, message: Any) -> Any:
        # peewee adds `id` to the model at run time: its stubs cannot know it.
        query = User.select().where(User.id == 1)  # pyright: ignore[reportUnknownMemberType, reportAttributeAccessIssue, reportUnknownArgumentType]
        self.selected.add([user.name for user in query])
        return query
