"""One `def` and one `async def` execute method, each mid-call when the test signals."""

from __future__ import annotations

import logging
import time

import anyio

import farine.execute

log = logging.getLogger("inflight")


class Inflight:
    @farine.execute.method()
    def sync_work(self) -> None:
        log.info("sync started")
        time.sleep(1.5)  # simulated blocking work, in flight when SIGTERM arrives
        log.info("sync finished")

    @farine.execute.method()
    async def async_work(self) -> None:
        log.info("async started")
        await anyio.sleep(1.5)  # simulated work, in flight when SIGTERM arrives
        log.info("async finished")
