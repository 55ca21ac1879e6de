"""A run-once method: the process exits when it is done."""

from __future__ import annotations

import logging

import farine.execute

log = logging.getLogger("once")


class Once:
    @farine.execute.method(restart=False)
    def work(self) -> None:
        log.info("once ran")
