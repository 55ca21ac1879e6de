"""baguette-messaging's RPC and RPC-stream examples, as one runnable pair of services.

Run it from the `examples` folder with `farine start rpcdemo`: with no configuration it
uses the in-process `memory://` broker, so the server and its client share this one
process. Services start in the order they are defined, so `Server` is ready before
`Client` calls it. Stop it with Ctrl-C.

To run them apart, point both at RabbitMQ (`amqp_uri = amqp://guest:guest@127.0.0.1:5672/`
in the INI file); then a shell can call the server too:
`farine call server.letters --stream`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import farine.execute
import farine.rpc

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)


class Server:
    """Waits for calls and answers them."""

    @farine.rpc.method()
    def dummy(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @farine.rpc.method()
    def letters(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        # A generator streams its items: the caller iterates them as they arrive.
        yield "a"
        yield "b"


class Client:
    """Calls the server once, from a `def` method (run in a worker thread)."""

    @farine.execute.method(restart=False)
    def execute(self) -> None:
        self.dummy()
        self.stream()

    @farine.rpc.client("server")
    def dummy(self, rpc: farine.rpc.Client) -> None:
        result = rpc.dummy()  # blocks until the server answers
        logger.info("client: server.dummy() returned %r", result)

    @farine.rpc.client("server")
    def stream(self, rpc: farine.rpc.Client) -> None:
        for result in rpc.letters(__stream__=True):
            logger.info("client: server.letters() streamed %r", result)
        logger.info("client: done")
