"""The whole Server-Sent Event, for handlers that want more than its data."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("Event",)


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event as it arrived on the stream.

    A handler receives it as its optional second parameter:
    `def on_event(self, data, event): ...`.

    Attributes:
        type: The event type (the `event:` field); `"message"` when the server sent none.
        data: The raw data text (the `data:` lines joined by newlines), before decoding.
        id: The last event ID of the stream once this event arrived (the `id:` field of
            this event or of an earlier one, as the SSE spec says), or `None`. farine
            sends it back as `Last-Event-ID` when it reconnects.
        retry: The `retry:` field of this event in milliseconds, or `None` when absent.
    """

    type: str
    data: str
    id: str | None = None
    retry: int | None = None
