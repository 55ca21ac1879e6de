"""The engine tells a connection the broker blocks (`connection.blocked`) from one that
it does not, through aiormq's public `ready()` only.

A real alarm would block every connection of the shared test broker, so the connection
is a stand-in whose `ready()` waits, as aiormq's does, while blocked. The probe is asyncio
code on the engine's loop, which is an asyncio loop on both backends.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from farine._broker.aiormq.calls import ChannelCalls
from farine._broker.aiormq.engine import Engine
from farine._broker.interface import ConnectionOptions


class _Connection:
    """What the probe reads of an aiormq connection: `is_closed` and `ready()`."""

    def __init__(self) -> None:
        self.is_closed = False
        self.unblocked = asyncio.Event()
        self.unblocked.set()

    async def ready(self) -> None:
        await self.unblocked.wait()


def test_blocked_is_true_only_while_ready_waits() -> None:
    async def main() -> list[bool]:
        engine = Engine("amqp://guest:guest@127.0.0.1:5672/", ConnectionOptions(), ChannelCalls())
        seen = [await engine.blocked()]  # no connection yet: nothing blocks it
        connection = _Connection()
        engine.connection = cast(Any, connection)
        seen.append(await engine.blocked())
        connection.unblocked.clear()  # connection.blocked arrived
        seen.append(await engine.blocked())
        connection.unblocked.set()  # connection.unblocked
        seen.append(await engine.blocked())
        connection.unblocked.clear()
        connection.is_closed = True  # a closed connection is down, not blocked
        seen.append(await engine.blocked())
        return seen

    assert asyncio.run(main()) == [False, False, True, False, False]
