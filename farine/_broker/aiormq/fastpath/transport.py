"""aiormq's TCP connections as the fast path opens them.

The connection's frames are read by farine's `FrameReader`, its socket reads
`READ_SIZE` bytes at a time, and on the trio backend its writes are gathered
(`RoundWriter`). aiormq looks its `FrameReceiver` up as a module global when it connects:
`reader.install()` replaces it once, and the replacement uses `FrameReader` only for
the readers registered here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq.connection

from farine._broker.aiormq.fastpath.driven import DrivenLoop, RoundWriter
from farine._broker.aiormq.fastpath.reader import READ_SIZE, use_frame_reader
from farine._broker.aiormq.fastpath.reader import install as install_reader

__all__ = ("TcpTransportFactory",)


class TcpTransportFactory(aiormq.connection.TCPTransportFactory):
    """aiormq's plain TCP connection, reading `READ_SIZE` bytes at a time, its frames
    read by a `FrameReader`; on the trio backend, its writes are gathered
    (`RoundWriter`).

    asyncio's socket transports read 256 KiB at a time: a buffer that large is mapped,
    shrunk to what was read and unmapped again, three more system calls for every read.
    """

    #: The writer of the connection it opened (the last one).
    writer: asyncio.StreamWriter | None = None

    async def create(
        self, url: Any, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await super().create(url, **kwargs)
        self.writer = writer
        if install_reader():
            use_frame_reader(reader)
        transport: Any = writer.transport
        if hasattr(transport, "max_size"):  # asyncio's socket transports
            transport.max_size = READ_SIZE
        loop = asyncio.get_running_loop()
        if isinstance(loop, DrivenLoop):  # the trio backend
            RoundWriter(writer, loop)
        return reader, writer
