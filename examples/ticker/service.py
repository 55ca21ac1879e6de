"""A service with two long-running methods: one `def`, one `async def`.

Run it with `farine start ticker` from the `examples` folder; stop it with Ctrl-C.
"""

from __future__ import annotations

import logging
import time

import anyio

import farine.execute

logger = logging.getLogger(__name__)


class Ticker:
    """Logs a tick every second from a worker thread and from the event loop."""

    def __init__(self) -> None:
        self.ticks = 0

    @farine.execute.method()
    def tick_in_thread(self) -> None:
        time.sleep(1)  # a blocking call is fine in a `def` method: it has its own thread
        self.ticks += 1
        logger.info("tick %d from a worker thread", self.ticks)

    @farine.execute.method()
    async def tick_on_loop(self) -> None:
        await anyio.sleep(1)
        logger.info("tick from the event loop")
