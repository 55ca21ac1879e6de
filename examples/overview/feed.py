"""A tiny Server-Sent-Events stream to feed the `overview` example.

Serves `http://127.0.0.1:8000/events` (another port: `python overview/feed.py 8001`):
every client gets one event a second, `data: {"n": 1}`, `{"n": 2}`, ... with an `id:`,
and resumes after the `Last-Event-ID` it sends when it reconnects. Stop it with Ctrl-C.
Only for the example: a real stream comes from a real web server.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from anyio.abc import SocketStream

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
)


async def serve_client(stream: SocketStream) -> None:
    async with stream:
        request = b""
        try:
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            last_id = 0
            for line in request.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "last-event-id" and value.strip().isdigit():
                    last_id = int(value.strip())
            await stream.send(HEAD)
            n = last_id
            while True:
                n += 1
                event = f"id: {n}\ndata: {json.dumps({'n': n})}\n\n"
                await stream.send(event.encode())
                await anyio.sleep(1)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass  # the client went away


async def main(port: int) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    print(f"serving events on http://127.0.0.1:{port}/events", flush=True)  # noqa: T201
    await listener.serve(serve_client)


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
