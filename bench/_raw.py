"""What the raw aiormq rows of the benchmarks share."""

from __future__ import annotations

from typing import Any

import aiormq.connection

#: The read size farine sets on its AMQP sockets (`farine._broker.aiormq.connection`).
FARINE_READ_SIZE = 64 * 1024


class ReadSize(aiormq.connection.TCPTransportFactory):
    """aiormq's TCP connection, reading `size` bytes at a time instead of asyncio's 256 KiB.

    The raw row with this factory shows how much of farine's figures comes from its read
    size alone: pass `transport_factory=ReadSize(FARINE_READ_SIZE)` to `aiormq.connect`.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    async def create(self, url: Any, **kwargs: Any) -> Any:
        reader, writer = await super().create(url, **kwargs)
        transport: Any = writer.transport
        transport.max_size = self.size
        return reader, writer


def connect_kwargs(read_size: int | None) -> dict[str, Any]:
    """`aiormq.connect` keyword arguments for a raw row (aiormq's defaults when None)."""
    return {} if read_size is None else {"transport_factory": ReadSize(read_size)}
