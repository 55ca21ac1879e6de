"""A method that keeps failing, beside one that keeps working."""

from __future__ import annotations

import logging

import anyio

import farine.execute

log = logging.getLogger("crashy")


class Crashy:
    def __init__(self) -> None:
        self.ok_runs = 0

    @farine.execute.method(backoff_initial=0.05, backoff_max=0.2)
    async def fail(self) -> None:
        raise RuntimeError("boom")

    @farine.execute.method()
    async def keep_going(self) -> None:
        self.ok_runs += 1
        log.info("still working %d", self.ok_runs)
        await anyio.sleep(0.1)
