"""HTTP Server-Sent-Events listeners: `farine.stream.http()` calls a method per event.

Example:
    ```python
    import farine.stream

    class Client:
        @farine.stream.http()
        def listen_event(self, data):
            return True
    ```
"""

from __future__ import annotations

from ._event import Event as Event
from ._http import HttpStreamSpec as HttpStreamSpec
from ._http import http as http

__all__ = ("Event", "HttpStreamSpec", "http")
