"""A service that logs every event of a Server-Sent-Events stream.

It is the seed README's "HTTP Stream" example. Point it at a stream in the INI file::

    [listener]
    endpoint = http://127.0.0.1:8000/events

then run `farine start sse_listener` from the `examples` folder; stop it with Ctrl-C.
"""

from __future__ import annotations

import logging
from typing import Any

import farine.stream

logger = logging.getLogger(__name__)


class Listener:
    """Listens to the stream at the `endpoint` setting; farine reconnects when it drops."""

    @farine.stream.http()
    def listen_event(self, data: Any) -> bool:
        """Log the event's data: a dict for a JSON object, the raw string otherwise.

        `Any` (or no annotation at all, as in the seed) means "JSON when it parses,
        else the raw text"; annotate a `msgspec.Struct` or a dataclass to get one.
        """
        logger.info("received %r", data)
        return True
