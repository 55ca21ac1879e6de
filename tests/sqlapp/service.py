"""Services whose handlers the database tests call (through `ServiceContext.call`)."""

from __future__ import annotations

import threading
from typing import cast

import anyio

import farine.execute
from farine.connectors.sql import Database, WithDatabase
from farine.entrypoints import current_service

from .models import Person


class Boom(Exception):
    """Raised by a handler on purpose."""


class Store(WithDatabase):
    """The seed's RPC service: `save` then `count`, plus handlers that fail or peek."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most_running = 0

    @farine.execute.method(restart=False)
    async def stay_up(self) -> None:
        # Keeps the service running until the test stops the runtime.
        ctx = current_service()
        assert ctx is not None
        await ctx.stopping.wait()

    def save(self, name: str) -> bool:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            Person.create(name=name)
        finally:
            with self._lock:
                self.running -= 1
        return True

    def count(self) -> int:
        return Person.select().count()

    def save_then_fail(self, name: str) -> None:
        Person.create(name=name)
        raise Boom(name)

    def in_transaction(self) -> bool:
        return self.db.in_transaction()

    async def save_async(self, name: str) -> bool:
        return await self.db_run(self.save, name)

    async def db_on_loop(self) -> object:
        return self.db


class Recorder:
    """An execute entrypoint (no `WithDatabase` base) that saves a row in its own thread."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.connection_open: bool | None = None
        self.thread: int | None = None

    @farine.execute.method(restart=False)
    def record(self) -> None:
        # No WithDatabase base here: farine adds `self.db` to the class at start-up.
        db = cast(Database, getattr(self, "db"))  # noqa: B009
        self.connection_open = not db.is_closed()
        self.thread = threading.get_ident()
        Person.create(name="from execute")
        anyio.from_thread.run_sync(self.done.set)

    @farine.execute.method(restart=False)
    async def stay_up(self) -> None:
        ctx = current_service()
        assert ctx is not None
        await ctx.stopping.wait()
