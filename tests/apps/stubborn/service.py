"""A `def` method that outlives any reasonable grace period."""

from __future__ import annotations

import logging
import time

import farine.execute

log = logging.getLogger("stubborn")


class Stubborn:
    @farine.execute.method()
    def block(self) -> None:
        log.info("blocking started")
        time.sleep(120)
        log.info("blocking finished")
