"""Three classes: two services in definition order, and a plain helper class."""

from __future__ import annotations

import logging

import anyio

import farine.execute

log = logging.getLogger("multi")


class Helper:
    """Not a service: it has no entrypoint."""


class Zeta:
    @farine.execute.method(restart=False)
    async def work(self) -> None:
        log.info("zeta ran")


class Alpha:
    @farine.execute.method(restart=False)
    async def work(self) -> None:
        await anyio.lowlevel.checkpoint()
        log.info("alpha ran")
