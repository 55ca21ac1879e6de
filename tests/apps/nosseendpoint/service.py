"""An SSE listener with no endpoint: neither `http(endpoint=...)` nor an `endpoint` key."""

from __future__ import annotations

from typing import Any

import farine.stream


class Listener:
    @farine.stream.http()
    def on_event(self, data: Any) -> None:
        pass
