"""The tutorial's first service: greet three times, then stop."""

from __future__ import annotations

import logging

import anyio

import farine.execute

log = logging.getLogger("hello")


class Hello:
    """A service: its name is `hello`, its settings are in the `[hello]` section."""

    def __init__(self) -> None:
        self.greetings = 0

    @farine.execute.method(restart=False)
    async def greet(self) -> None:
        for _ in range(3):
            self.greetings += 1
            log.info("hello #%d", self.greetings)
            await anyio.sleep(0.1)

    @farine.execute.method(restart=False)
    def blocking_greet(self) -> None:
        # A `def` method runs in a worker thread: blocking calls are fine here.
        log.info("hello from a worker thread")
