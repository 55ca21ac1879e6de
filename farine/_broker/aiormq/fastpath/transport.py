"""aiormq's TCP connections as the fast path opens them.

The connection's frames are read by farine's `FrameReader`, its socket reads
`READ_SIZE` bytes at a time, and on the trio backend its writes are gathered
(`HeldWrites`). aiormq looks its `FrameReceiver` up as a module global when it connects:
`reader.install()` replaces it once, and the replacement reads leanly only the readers
registered here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq.connection

from farine._broker.aiormq.fastpath.driven import DrivenLoop, HeldWrites
from farine._broker.aiormq.fastpath.reader import READ_SIZE, read_leanly
from farine._broker.aiormq.fastpath.reader import install as install_reader

__all__ = ("TcpTransportFactory",)


class TcpTransportFactory(aiormq.connection.TCPTransportFactory):
    """aiormq's plain TCP connection, reading `READ_SIZE` bytes at a time, its frames
    read by a `FrameReader`; on the trio backend, its writes are gathered
    (`HeldWrites`).

    asyncio's socket transports read 256 KiB at a time: a buffer that large is mapped,
    shrunk to what was read and unmapped again, three more system calls for every read;
    measured here, about a tenth of the CPU time of a short RPC call. 64 KiB comes from
    the heap, and still takes many frames at once.
    """

    #: The writer of the connection it opened (the last one).
    writer: asyncio.StreamWriter | None = None

    async def create(
        self, url: Any, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await super().create(url, **kwargs)
        self.writer = writer
        if install_reader():
            read_leanly(reader)
        transport: Any = writer.transport
        if hasattr(transport, "max_size"):  # asyncio's socket transports
            transport.max_size = READ_SIZE
        loop = asyncio.get_running_loop()
        if isinstance(loop, DrivenLoop):  # the trio backend
            HeldWrites(writer, loop)
        return reader, writer
