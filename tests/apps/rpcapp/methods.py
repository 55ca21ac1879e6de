"""The RPC methods of the `rpcapp` test service (see `service.py` for its name)."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import anyio

import farine.rpc

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("rpcapp")


class Calc:
    @farine.rpc.method()
    def add(self, a: int, b: int = 0) -> int:
        return a + b

    @farine.rpc.method()
    def count(self, n: int) -> Iterator[int]:
        try:
            yield from range(n)
        finally:
            log.info("count: generator closed")

    @farine.rpc.method()
    def fail(self, message: str) -> None:
        raise ValueError(message)

    @farine.rpc.method()
    async def slow(self, seconds: float) -> str:
        await anyio.sleep(seconds)  # simulated work, longer than the caller's deadline
        return "done"

    @farine.rpc.method()
    def block(self, path: str) -> dict[str, int]:
        """Answer once `path` exists: the test kills this instance while it waits."""
        log.info("block: waiting for %s", path)
        while not os.path.exists(path):
            time.sleep(0.02)  # simulated long work in the service
        return {"pid": os.getpid()}
